/*
 * engine_queues: what crosses between the engine's main thread and Python, without the GIL.
 *  - an event ring (kind, name, CLOCK_MONOTONIC ns) the main thread appends to and the runtime's
 *    worker reads itself (an EngineEventSource), with a bell (an eventfd) the main thread rings
 *    for an event that can open a gap (not a pass_begin) while the worker sleeps on it;
 *  - a request queue (JSON texts with ids) the main thread appends to;
 *  - a GPU-timestamp queue (JSON texts, one per captured frame; Godot 4 only);
 *    both ring an inbox bell that Python's pump thread sleeps on;
 *  - a result queue (JSON texts) Python appends to and the main thread empties in poll().
 * One mutex guards the ring and the queues; the main thread holds it for a few hundred ns per
 * call. The main thread makes a system call (an eventfd write) only for the first gap-opening
 * event after the worker armed the bell, and once per request and GPU frame. Shared by the
 * Godot 3 and Godot 4 bridges.
 */
#ifndef LEGO_ENGINE_QUEUES_H
#define LEGO_ENGINE_QUEUES_H

#include <stddef.h>
#include <stdint.h>

#define EVENT_RING_CAPACITY 8192
#define EVENT_KIND_BYTES 16
#define EVENT_NAME_BYTES 48

typedef struct {
	char kind[EVENT_KIND_BYTES];
	char name[EVENT_NAME_BYTES];
	int64_t t_ns;
} engine_event;

typedef struct text_message {
	int64_t id;
	char *text; /* malloc'd UTF-8 JSON */
	struct text_message *next;
} text_message;

typedef struct {
	uint64_t events_pushed;
	uint64_t events_dropped; /* oldest events overwritten because nobody drained the ring */
	uint64_t events_refused; /* events whose kind is not one of the four (never queued) */
	uint64_t event_bell_rings; /* gap-opening events that found the bell armed and rang it */
	uint64_t requests;
	uint64_t gpu_frames;
	int64_t engine_call_ns; /* main-thread time inside the bridge's per-frame calls */
} queue_counters;

/* CLOCK_MONOTONIC in ns: the clock behind Python's time.monotonic_ns(). */
int64_t monotonic_ns(void);

/* Main thread. */
void queues_push_event(const char *kind, const char *name, int64_t t_ns);
int64_t queues_push_request(char *json); /* takes ownership of json; returns the request id */
void queues_push_gpu_frame(char *json);  /* takes ownership of json */
text_message *queues_take_results(void); /* the results queued since the last call, oldest first */
void queues_add_engine_time(int64_t since_ns);

/* Python side, called without the GIL where they may wait.
 * The worker: queues_take_events moves every queued event into batch (room for
 * EVENT_RING_CAPACITY) and returns their count; queues_has_events says whether any is queued;
 * before sleeping on the bell (queues_events_bell, a file descriptor for poll) the worker calls
 * queues_arm_events_bell (clears it; the next gap-opening event rings it), then
 * queues_has_events. The pump: queues_wait_inbox waits until a request or a GPU frame is queued
 * or give_up_ns passes, then takes both. */
size_t queues_take_events(engine_event *batch);
int queues_has_events(void);
int queues_events_bell(void); /* -1 when the eventfds could not be made (queues_bells_error) */
int queues_bells_error(void);  /* the errno of that failure */
void queues_arm_events_bell(void);
void queues_wait_inbox(int64_t give_up_ns, text_message **requests, text_message **gpu_frames);
void queues_push_result(const char *text);
queue_counters queues_counters(void);

void text_message_free_all(text_message *messages);

#endif
