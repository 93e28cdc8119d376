/*
 * engine_queues: what crosses between the engine's main thread and Python, without the GIL.
 *  - an event ring (kind, name, CLOCK_MONOTONIC ns) the main thread appends to;
 *  - a request queue (JSON texts with ids) the main thread appends to;
 *  - a GPU-timestamp queue (JSON texts, one per captured frame; Godot 4 only);
 *  - a result queue (JSON texts) Python appends to and the main thread empties in poll().
 * One mutex guards all of them; the main thread holds it for a few hundred ns per call. Python's
 * pump thread polls the lengths (atomics) instead of waiting on a condition variable, so the
 * main thread never makes a wake-up syscall. Shared by the Godot 3 and Godot 4 bridges.
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

/* Python side. Waits (polling every poll_ns) until an event, a request or a GPU frame is queued
 * or give_up_ns passes, then takes everything: events into batch (room for
 * EVENT_RING_CAPACITY), returns their count. Call without the GIL. */
size_t queues_wait_and_take(int64_t give_up_ns, int64_t poll_ns, engine_event *batch,
		text_message **requests, text_message **gpu_frames);
void queues_push_result(const char *text);
queue_counters queues_counters(void);

void text_message_free_all(text_message *messages);

#endif
