#include "engine_queues.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

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
static queue_counters counters = { 0, 0, 0, 0, 0, 0, 0 };

/* The bells: eventfds, made once by make_bells(). The engine writes the event bell for the first
 * event that can open a gap after the worker armed it (events_bell_armed, set when the worker
 * clears the bell just before sleeping on it, cleared by that write): a worker busy in a gap
 * costs the engine no system call, one woken by something else at most one. The inbox bell
 * rings for every request and GPU frame (tens per second). */
static pthread_once_t bells_once = PTHREAD_ONCE_INIT;
static int events_bell = -1;
static int inbox_bell = -1;
static int bells_errno = 0; /* why make_bells failed */
static int events_bell_armed = 0;

static void make_bells(void) {
	events_bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	inbox_bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (events_bell < 0 || inbox_bell < 0) {
		bells_errno = errno;
	}
}

static void ring(int bell) {
	uint64_t one = 1;
	ssize_t written = write(bell, &one, sizeof(one));
	(void)written; /* a bell past its counter's maximum is rung already */
}

static void clear(int bell) {
	uint64_t count;
	ssize_t got = read(bell, &count, sizeof(count));
	(void)got; /* EAGAIN: it was not rung */
}

static int is_kind(const char *kind) {
	static const char *const kinds[] = { "frame_begin", "pass_begin", "pass_end", "frame_end" };
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		if (strcmp(kind, kinds[i]) == 0) {
			return 1;
		}
	}
	return 0;
}

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
	if (!is_kind(kind)) {
		__atomic_add_fetch(&counters.events_refused, 1, __ATOMIC_RELAXED);
		return;
	}
	pthread_once(&bells_once, make_bells);
	pthread_mutex_lock(&queue_mutex);
	if (ring_count == EVENT_RING_CAPACITY) {
		/* Nobody drains (Python stopped or stalled): keep the newest events. */
		ring_head = (ring_head + 1) % EVENT_RING_CAPACITY;
		__atomic_store_n(&ring_count, ring_count - 1, __ATOMIC_RELAXED); /* read without the lock */
		counters.events_dropped++;
	}
	engine_event *slot = &event_ring[(ring_head + ring_count) % EVENT_RING_CAPACITY];
	snprintf(slot->kind, sizeof(slot->kind), "%s", kind);
	snprintf(slot->name, sizeof(slot->name), "%s", name);
	slot->t_ns = t_ns;
	__atomic_store_n(&ring_count, ring_count + 1, __ATOMIC_SEQ_CST);
	counters.events_pushed++;
	pthread_mutex_unlock(&queue_mutex);
	/* After the count is stored: a worker that armed the bell and then saw no event is woken. */
	if (strcmp(kind, "pass_begin") != 0 && __atomic_exchange_n(&events_bell_armed, 0, __ATOMIC_SEQ_CST)) {
		ring(events_bell);
		__atomic_add_fetch(&counters.event_bell_rings, 1, __ATOMIC_RELAXED);
	}
}

int64_t queues_push_request(char *json) {
	text_message *message = new_message(0, json);
	pthread_once(&bells_once, make_bells);
	pthread_mutex_lock(&queue_mutex);
	message->id = next_request_id++;
	counters.requests++;
	queue_append(&request_queue, message);
	int64_t id = message->id;
	pthread_mutex_unlock(&queue_mutex);
	ring(inbox_bell);
	return id;
}

void queues_push_gpu_frame(char *json) {
	text_message *message = new_message(0, json);
	pthread_once(&bells_once, make_bells);
	pthread_mutex_lock(&queue_mutex);
	counters.gpu_frames++;
	queue_append(&gpu_queue, message);
	pthread_mutex_unlock(&queue_mutex);
	ring(inbox_bell);
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

int queues_has_events(void) {
	return __atomic_load_n(&ring_count, __ATOMIC_SEQ_CST) > 0;
}

size_t queues_take_events(engine_event *batch) {
	size_t n = 0;
	if (!queues_has_events()) {
		return 0; /* the worker looks between every two subtasks: no lock when nothing came */
	}
	pthread_mutex_lock(&queue_mutex);
	while (ring_count > 0) {
		batch[n++] = event_ring[ring_head];
		ring_head = (ring_head + 1) % EVENT_RING_CAPACITY;
		__atomic_store_n(&ring_count, ring_count - 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&queue_mutex);
	return n;
}

int queues_events_bell(void) {
	pthread_once(&bells_once, make_bells);
	return events_bell < 0 || inbox_bell < 0 ? -1 : events_bell;
}

int queues_bells_error(void) {
	return bells_errno;
}

void queues_arm_events_bell(void) {
	pthread_once(&bells_once, make_bells);
	clear(events_bell);
	__atomic_store_n(&events_bell_armed, 1, __ATOMIC_SEQ_CST);
}

void queues_wait_inbox(int64_t give_up_ns, text_message **requests, text_message **gpu_frames) {
	pthread_once(&bells_once, make_bells);
	for (;;) {
		if (__atomic_load_n(&request_queue.length, __ATOMIC_ACQUIRE) > 0 ||
				__atomic_load_n(&gpu_queue.length, __ATOMIC_ACQUIRE) > 0) {
			break;
		}
		int64_t left_ns = give_up_ns - monotonic_ns();
		if (left_ns <= 0) {
			break;
		}
		struct pollfd bell = { inbox_bell, POLLIN, 0 };
		int ready = poll(&bell, 1, (int)((left_ns + 999999) / 1000000));
		if (ready > 0) {
			clear(inbox_bell);
		} else if (ready < 0 && errno != EINTR) {
			break;
		}
	}
	pthread_mutex_lock(&queue_mutex);
	*requests = queue_take_all(&request_queue);
	*gpu_frames = queue_take_all(&gpu_queue);
	pthread_mutex_unlock(&queue_mutex);
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
