#include "engine_queues.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
	text_message *head;
	text_message *tail;
	size_t length; /* read without the mutex (atomic) by the pollers */
} text_queue;

static pthread_mutex_t queue_mutex = PTHREAD_MUTEX_INITIALIZER; /* guards everything below */
static engine_event event_ring[EVENT_RING_CAPACITY];
static size_t ring_head = 0; /* next slot to read */
static size_t ring_count = 0;
static text_queue request_queue = { NULL, NULL, 0 }; /* engine -> Python */
static text_queue gpu_queue = { NULL, NULL, 0 };     /* engine -> Python */
static text_queue result_queue = { NULL, NULL, 0 };  /* Python -> engine */
static int64_t next_request_id = 1;
static queue_counters counters = { 0, 0, 0, 0, 0 };

int64_t monotonic_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void queue_append(text_queue *queue, text_message *message) {
	message->next = NULL;
	if (queue->tail) {
		queue->tail->next = message;
	} else {
		queue->head = message;
	}
	queue->tail = message;
	__atomic_store_n(&queue->length, queue->length + 1, __ATOMIC_RELEASE);
}

static text_message *queue_take_all(text_queue *queue) {
	text_message *all = queue->head;
	queue->head = queue->tail = NULL;
	__atomic_store_n(&queue->length, 0, __ATOMIC_RELEASE);
	return all;
}

static text_message *new_message(int64_t id, char *text) {
	text_message *message = malloc(sizeof(text_message));
	message->id = id;
	message->text = text;
	message->next = NULL;
	return message;
}

void queues_push_event(const char *kind, const char *name, int64_t t_ns) {
	pthread_mutex_lock(&queue_mutex);
	if (ring_count == EVENT_RING_CAPACITY) {
		/* Nobody drains (Python stopped or stalled): keep the newest events. */
		ring_head = (ring_head + 1) % EVENT_RING_CAPACITY;
		ring_count--;
		counters.events_dropped++;
	}
	engine_event *slot = &event_ring[(ring_head + ring_count) % EVENT_RING_CAPACITY];
	snprintf(slot->kind, sizeof(slot->kind), "%s", kind);
	snprintf(slot->name, sizeof(slot->name), "%s", name);
	slot->t_ns = t_ns;
	__atomic_store_n(&ring_count, ring_count + 1, __ATOMIC_RELEASE);
	counters.events_pushed++;
	pthread_mutex_unlock(&queue_mutex);
}

int64_t queues_push_request(char *json) {
	text_message *message = new_message(0, json);
	pthread_mutex_lock(&queue_mutex);
	message->id = next_request_id++;
	counters.requests++;
	queue_append(&request_queue, message);
	int64_t id = message->id;
	pthread_mutex_unlock(&queue_mutex);
	return id;
}

void queues_push_gpu_frame(char *json) {
	text_message *message = new_message(0, json);
	pthread_mutex_lock(&queue_mutex);
	counters.gpu_frames++;
	queue_append(&gpu_queue, message);
	pthread_mutex_unlock(&queue_mutex);
}

text_message *queues_take_results(void) {
	if (__atomic_load_n(&result_queue.length, __ATOMIC_ACQUIRE) == 0) {
		return NULL;
	}
	pthread_mutex_lock(&queue_mutex);
	text_message *results = queue_take_all(&result_queue);
	pthread_mutex_unlock(&queue_mutex);
	return results;
}

void queues_add_engine_time(int64_t since_ns) {
	__atomic_add_fetch(&counters.engine_call_ns, monotonic_ns() - since_ns, __ATOMIC_RELAXED);
}

size_t queues_wait_and_take(int64_t give_up_ns, int64_t poll_ns, engine_event *batch,
		text_message **requests, text_message **gpu_frames) {
	for (;;) {
		/* Poll rather than wait on a condition variable: signalling a waiter would put a futex
		 * wake-up (and often a preemption) on the engine's main thread. */
		if (__atomic_load_n(&ring_count, __ATOMIC_ACQUIRE) > 0 ||
				__atomic_load_n(&request_queue.length, __ATOMIC_ACQUIRE) > 0 ||
				__atomic_load_n(&gpu_queue.length, __ATOMIC_ACQUIRE) > 0 || monotonic_ns() >= give_up_ns) {
			break;
		}
		struct timespec nap = { 0, poll_ns };
		nanosleep(&nap, NULL);
	}
	size_t n = 0;
	pthread_mutex_lock(&queue_mutex);
	while (ring_count > 0) {
		batch[n++] = event_ring[ring_head];
		ring_head = (ring_head + 1) % EVENT_RING_CAPACITY;
		__atomic_store_n(&ring_count, ring_count - 1, __ATOMIC_RELEASE);
	}
	*requests = queue_take_all(&request_queue);
	*gpu_frames = queue_take_all(&gpu_queue);
	pthread_mutex_unlock(&queue_mutex);
	return n;
}

void queues_push_result(const char *text) {
	text_message *message = new_message(0, strdup(text));
	pthread_mutex_lock(&queue_mutex);
	queue_append(&result_queue, message);
	pthread_mutex_unlock(&queue_mutex);
}

queue_counters queues_counters(void) {
	pthread_mutex_lock(&queue_mutex);
	queue_counters copy = counters;
	pthread_mutex_unlock(&queue_mutex);
	copy.engine_call_ns = __atomic_load_n(&counters.engine_call_ns, __ATOMIC_RELAXED);
	return copy;
}

void text_message_free_all(text_message *messages) {
	while (messages != NULL) {
		text_message *next = messages->next;
		free(messages->text);
		free(messages);
		messages = next;
	}
}
