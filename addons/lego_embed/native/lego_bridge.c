/*
 * lego_bridge: a GDNative library that embeds CPython inside Godot 3 and exposes the NativeScript
 * class "LegoBridge", which forwards to the Python module lego_embed.engines.godot.
 *
 * Threading model: the engine's main thread never takes the GIL after start().
 *  - start(config) initialises Python once per process (on the main thread), imports the engine
 *    module, calls its start() and then releases the GIL (PyEval_SaveThread).
 *  - event(kind, name) stamps CLOCK_MONOTONIC (the clock behind time.monotonic_ns) and appends
 *    to a mutex-protected ring. request(...) serialises its arguments to JSON in C, gives the
 *    request an id and appends it to a queue. poll() moves the finished results (JSON texts
 *    queued by Python) into an Array. None of them touches Python.
 *  - A Python pump thread (lego_embed.engines.godot) waits in _lego_bridge.wait_engine (GIL
 *    released, polling the queues every PUMP_POLL_NS, so the main thread never makes a wake-up
 *    syscall), forwards events to the Runtime, submits requests, and queues results with
 *    _lego_bridge.push_result.
 *  - stats() and stop() take the GIL (diagnostics and shutdown only). Every Python exception is
 *    caught: the caller gets {"error": "Type: message"} and nothing unwinds into the engine.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gdnative_api_struct.gen.h>

#ifndef LEGO_LIBPYTHON_SONAME
#error "LEGO_LIBPYTHON_SONAME must name the libpython this library links (set by build.sh)"
#endif
#ifndef LEGO_FALLBACK_PYTHON
#error "LEGO_FALLBACK_PYTHON must name the interpreter found by python3-config (set by build.sh)"
#endif

#define ENGINE_MODULE "lego_embed.engines.godot"
#define EVENT_RING_CAPACITY 8192
#define EVENT_NAME_BYTES 48
#define ERROR_BYTES 2048
#define MAX_JSON_DEPTH 32
#define PUMP_POLL_NS 1000000 /* the pump looks at the queues every 1 ms */

static const godot_gdnative_core_api_struct *api = NULL;
static const godot_gdnative_ext_nativescript_api_struct *nativescript_api = NULL;

static int64_t monotonic_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ------------------------------------------------------------- engine -> Python queues ---- */

typedef struct {
	char kind[16];
	char name[EVENT_NAME_BYTES];
	int64_t t_ns;
} engine_event;

typedef struct text_message {
	int64_t id;
	char *text; /* malloc'd UTF-8 JSON */
	struct text_message *next;
} text_message;

typedef struct {
	text_message *head;
	text_message *tail;
	size_t length;
} text_queue;

static pthread_mutex_t queue_mutex = PTHREAD_MUTEX_INITIALIZER; /* guards everything below */
static engine_event event_ring[EVENT_RING_CAPACITY];
static size_t ring_head = 0; /* next slot to read */
static size_t ring_count = 0;
static uint64_t events_pushed = 0;
static uint64_t events_dropped = 0;
static text_queue request_queue = { NULL, NULL, 0 }; /* engine -> Python */
static text_queue result_queue = { NULL, NULL, 0 };  /* Python -> engine */
static int64_t next_request_id = 1;

static int64_t engine_call_ns = 0; /* main-thread time inside event()/request()/poll() */
static int python_ready = 0;       /* Python initialised and the engine module imported */
static int exit_without_destructors = 0; /* a Python thread may still run native code at exit */
static PyObject *engine_module = NULL;

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

static void add_engine_time(int64_t since_ns) {
	__atomic_add_fetch(&engine_call_ns, monotonic_ns() - since_ns, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- Variant -> JSON ---- */

typedef struct {
	char *data;
	size_t length;
	size_t capacity;
	char error[ERROR_BYTES]; /* set when the value cannot be serialised */
} json_buffer;

static void json_put(json_buffer *buf, const char *text, size_t n) {
	if (buf->length + n + 1 > buf->capacity) {
		size_t capacity = buf->capacity ? buf->capacity : 256;
		while (buf->length + n + 1 > capacity) {
			capacity *= 2;
		}
		buf->data = realloc(buf->data, capacity);
		buf->capacity = capacity;
	}
	memcpy(buf->data + buf->length, text, n);
	buf->length += n;
	buf->data[buf->length] = '\0';
}

static void json_puts(json_buffer *buf, const char *text) {
	json_put(buf, text, strlen(text));
}

static void json_put_string(json_buffer *buf, const char *text, size_t n) {
	json_put(buf, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)text[i];
		char escaped[8];
		if (c == '"' || c == '\\') {
			escaped[0] = '\\';
			escaped[1] = (char)c;
			json_put(buf, escaped, 2);
		} else if (c < 0x20) {
			snprintf(escaped, sizeof(escaped), "\\u%04x", c);
			json_put(buf, escaped, 6);
		} else {
			json_put(buf, (const char *)&text[i], 1);
		}
	}
	json_put(buf, "\"", 1);
}

static void json_put_number(json_buffer *buf, double value) {
	char number[40];
	if (isnan(value)) {
		json_puts(buf, "NaN"); /* Python's json reads NaN/Infinity; validation rejects them */
	} else if (isinf(value)) {
		json_puts(buf, value > 0 ? "Infinity" : "-Infinity");
	} else {
		snprintf(number, sizeof(number), "%.17g", value);
		json_puts(buf, number);
	}
}

static void json_put_godot_string(json_buffer *buf, const godot_string *s) {
	godot_char_string utf8 = api->godot_string_utf8(s);
	json_put_string(buf, api->godot_char_string_get_data(&utf8), (size_t)api->godot_char_string_length(&utf8));
	api->godot_char_string_destroy(&utf8);
}

static int json_put_variant(json_buffer *buf, const godot_variant *v, int depth);

static int json_put_array(json_buffer *buf, const godot_array *arr, int depth) {
	json_put(buf, "[", 1);
	godot_int size = api->godot_array_size(arr);
	for (godot_int i = 0; i < size; i++) {
		if (i) {
			json_put(buf, ",", 1);
		}
		godot_variant item = api->godot_array_get(arr, i);
		int rc = json_put_variant(buf, &item, depth + 1);
		api->godot_variant_destroy(&item);
		if (rc < 0) {
			return -1;
		}
	}
	json_put(buf, "]", 1);
	return 0;
}

static int json_put_dictionary(json_buffer *buf, const godot_dictionary *dict, int depth) {
	json_put(buf, "{", 1);
	godot_array keys = api->godot_dictionary_keys(dict);
	godot_int size = api->godot_array_size(&keys);
	int rc = 0;
	for (godot_int i = 0; i < size && rc == 0; i++) {
		godot_variant key = api->godot_array_get(&keys, i);
		if (api->godot_variant_get_type(&key) != GODOT_VARIANT_TYPE_STRING) {
			snprintf(buf->error, sizeof(buf->error),
					"TypeError: Dictionary keys must be Strings (got a key of Variant type %d)",
					(int)api->godot_variant_get_type(&key));
			rc = -1;
		} else {
			if (i) {
				json_put(buf, ",", 1);
			}
			godot_string key_string = api->godot_variant_as_string(&key);
			json_put_godot_string(buf, &key_string);
			api->godot_string_destroy(&key_string);
			json_put(buf, ":", 1);
			godot_variant value = api->godot_dictionary_get(dict, &key);
			rc = json_put_variant(buf, &value, depth + 1);
			api->godot_variant_destroy(&value);
		}
		api->godot_variant_destroy(&key);
	}
	api->godot_array_destroy(&keys);
	if (rc == 0) {
		json_put(buf, "}", 1);
	}
	return rc;
}

/* Appends v as JSON; returns -1 with buf->error set for values JSON cannot carry. */
static int json_put_variant(json_buffer *buf, const godot_variant *v, int depth) {
	if (depth > MAX_JSON_DEPTH) {
		snprintf(buf->error, sizeof(buf->error), "ValueError: value nested deeper than %d levels", MAX_JSON_DEPTH);
		return -1;
	}
	switch (api->godot_variant_get_type(v)) {
		case GODOT_VARIANT_TYPE_NIL:
			json_puts(buf, "null");
			return 0;
		case GODOT_VARIANT_TYPE_BOOL:
			json_puts(buf, api->godot_variant_as_bool(v) ? "true" : "false");
			return 0;
		case GODOT_VARIANT_TYPE_INT: {
			char number[32];
			snprintf(number, sizeof(number), "%lld", (long long)api->godot_variant_as_int(v));
			json_puts(buf, number);
			return 0;
		}
		case GODOT_VARIANT_TYPE_REAL:
			json_put_number(buf, api->godot_variant_as_real(v));
			return 0;
		case GODOT_VARIANT_TYPE_STRING: {
			godot_string s = api->godot_variant_as_string(v);
			json_put_godot_string(buf, &s);
			api->godot_string_destroy(&s);
			return 0;
		}
		case GODOT_VARIANT_TYPE_VECTOR2: {
			godot_vector2 vec = api->godot_variant_as_vector2(v);
			json_put(buf, "[", 1);
			json_put_number(buf, api->godot_vector2_get_x(&vec));
			json_put(buf, ",", 1);
			json_put_number(buf, api->godot_vector2_get_y(&vec));
			json_put(buf, "]", 1);
			return 0;
		}
		case GODOT_VARIANT_TYPE_VECTOR3: {
			godot_vector3 vec = api->godot_variant_as_vector3(v);
			json_put(buf, "[", 1);
			json_put_number(buf, api->godot_vector3_get_axis(&vec, GODOT_VECTOR3_AXIS_X));
			json_put(buf, ",", 1);
			json_put_number(buf, api->godot_vector3_get_axis(&vec, GODOT_VECTOR3_AXIS_Y));
			json_put(buf, ",", 1);
			json_put_number(buf, api->godot_vector3_get_axis(&vec, GODOT_VECTOR3_AXIS_Z));
			json_put(buf, "]", 1);
			return 0;
		}
		case GODOT_VARIANT_TYPE_DICTIONARY: {
			godot_dictionary dict = api->godot_variant_as_dictionary(v);
			int rc = json_put_dictionary(buf, &dict, depth);
			api->godot_dictionary_destroy(&dict);
			return rc;
		}
		case GODOT_VARIANT_TYPE_ARRAY:
		case GODOT_VARIANT_TYPE_POOL_STRING_ARRAY:
		case GODOT_VARIANT_TYPE_POOL_INT_ARRAY:
		case GODOT_VARIANT_TYPE_POOL_REAL_ARRAY: {
			godot_array arr = api->godot_variant_as_array(v);
			int rc = json_put_array(buf, &arr, depth);
			api->godot_array_destroy(&arr);
			return rc;
		}
		default: {
			godot_string s = api->godot_variant_as_string(v);
			godot_char_string utf8 = api->godot_string_utf8(&s);
			snprintf(buf->error, sizeof(buf->error),
					"TypeError: Godot value '%s' (Variant type %d) cannot be passed to Python; use "
					"bool, int, float, String, Vector2/3, Array or Dictionary",
					api->godot_char_string_get_data(&utf8), (int)api->godot_variant_get_type(v));
			api->godot_char_string_destroy(&utf8);
			api->godot_string_destroy(&s);
			return -1;
		}
	}
}

/* ------------------------------------------------------------------ Variant helpers ---- */

static void variant_new_c_string(godot_variant *out, const char *text) {
	godot_string s = api->godot_string_chars_to_utf8(text);
	api->godot_variant_new_string(out, &s);
	api->godot_string_destroy(&s);
}

static char *variant_to_c_string(const godot_variant *v) {
	godot_string s = api->godot_variant_as_string(v);
	godot_char_string utf8 = api->godot_string_utf8(&s);
	godot_int len = api->godot_char_string_length(&utf8);
	char *copy = malloc((size_t)len + 1);
	memcpy(copy, api->godot_char_string_get_data(&utf8), (size_t)len);
	copy[len] = '\0';
	api->godot_char_string_destroy(&utf8);
	api->godot_string_destroy(&s);
	return copy;
}

/* {"error": message} as a Dictionary Variant. */
static godot_variant error_dict(const char *message) {
	godot_dictionary dict;
	api->godot_dictionary_new(&dict);
	godot_variant key, value, out;
	variant_new_c_string(&key, "error");
	variant_new_c_string(&value, message);
	api->godot_dictionary_set(&dict, &key, &value);
	api->godot_variant_destroy(&key);
	api->godot_variant_destroy(&value);
	api->godot_variant_new_dictionary(&out, &dict);
	api->godot_dictionary_destroy(&dict);
	return out;
}

/* {"error": message} as JSON text in a String Variant. */
static godot_variant error_json(const char *message) {
	json_buffer buf = { 0 };
	json_puts(&buf, "{\"error\":");
	json_put_string(&buf, message, strlen(message));
	json_puts(&buf, "}");
	godot_variant out;
	variant_new_c_string(&out, buf.data);
	free(buf.data);
	return out;
}

/* Fetch and clear the current Python exception as "Type: message" (GIL held). */
static void take_python_error(char *out, size_t out_len) {
	PyObject *type, *value, *traceback;
	PyErr_Fetch(&type, &value, &traceback);
	PyErr_NormalizeException(&type, &value, &traceback);
	const char *type_name = type ? ((PyTypeObject *)type)->tp_name : "Exception";
	PyObject *str = value ? PyObject_Str(value) : NULL;
	const char *text = str ? PyUnicode_AsUTF8(str) : NULL;
	if (text == NULL) {
		PyErr_Clear();
		text = "(the exception could not be converted to text)";
	}
	snprintf(out, out_len, "%s: %s", type_name, text);
	Py_XDECREF(str);
	Py_XDECREF(type);
	Py_XDECREF(value);
	Py_XDECREF(traceback);
}

/* ENGINE_MODULE.<function>(json_argument or nothing) -> its str result as a String Variant;
 * any exception becomes {"error": ...} JSON. Takes and releases the GIL. */
static godot_variant call_engine(const char *function, const char *json_argument) {
	PyGILState_STATE gil = PyGILState_Ensure();
	char message[ERROR_BYTES];
	godot_variant out;
	PyObject *result = json_argument ? PyObject_CallMethod(engine_module, function, "s", json_argument)
									 : PyObject_CallMethod(engine_module, function, NULL);
	const char *text = (result && PyUnicode_Check(result)) ? PyUnicode_AsUTF8(result) : NULL;
	if (text != NULL) {
		variant_new_c_string(&out, text);
	} else {
		if (result != NULL && !PyErr_Occurred()) {
			PyErr_Format(PyExc_TypeError, "%s.%s must return a JSON str", ENGINE_MODULE, function);
		}
		take_python_error(message, sizeof(message));
		out = error_json(message);
	}
	Py_XDECREF(result);
	PyGILState_Release(gil);
	return out;
}

/* ------------------------------------------------- _lego_bridge: the module Python sees ---- */

static PyObject *bridge_wait_engine(PyObject *self, PyObject *args) {
	double timeout_s;
	(void)self;
	if (!PyArg_ParseTuple(args, "d", &timeout_s)) {
		return NULL;
	}
	static engine_event batch[EVENT_RING_CAPACITY];
	size_t n = 0;
	text_message *requests = NULL;
	int64_t give_up_ns = monotonic_ns() + (int64_t)(timeout_s * 1e9);
	Py_BEGIN_ALLOW_THREADS;
	for (;;) {
		/* Poll rather than wait on a condition variable: signalling a waiter would put a futex
		 * wake-up (and often a preemption) on the engine's main thread. */
		if (__atomic_load_n(&ring_count, __ATOMIC_ACQUIRE) > 0 ||
				__atomic_load_n(&request_queue.length, __ATOMIC_ACQUIRE) > 0 || monotonic_ns() >= give_up_ns) {
			break;
		}
		struct timespec nap = { 0, PUMP_POLL_NS };
		nanosleep(&nap, NULL);
	}
	pthread_mutex_lock(&queue_mutex);
	while (ring_count > 0) {
		batch[n++] = event_ring[ring_head];
		ring_head = (ring_head + 1) % EVENT_RING_CAPACITY;
		__atomic_store_n(&ring_count, ring_count - 1, __ATOMIC_RELEASE);
	}
	requests = queue_take_all(&request_queue);
	pthread_mutex_unlock(&queue_mutex);
	Py_END_ALLOW_THREADS;

	PyObject *events = PyList_New((Py_ssize_t)n);
	PyObject *request_list = PyList_New(0);
	int ok = events != NULL && request_list != NULL;
	for (size_t i = 0; ok && i < n; i++) {
		PyObject *item = Py_BuildValue("(ssL)", batch[i].kind, batch[i].name, (long long)batch[i].t_ns);
		ok = item != NULL;
		if (ok) {
			PyList_SET_ITEM(events, (Py_ssize_t)i, item);
		}
	}
	while (requests != NULL) {
		text_message *next = requests->next;
		if (ok) {
			PyObject *item = Py_BuildValue("(Ls)", (long long)requests->id, requests->text);
			ok = item != NULL && PyList_Append(request_list, item) == 0;
			Py_XDECREF(item);
		}
		free(requests->text);
		free(requests);
		requests = next;
	}
	if (!ok) {
		Py_XDECREF(events);
		Py_XDECREF(request_list);
		return NULL;
	}
	return Py_BuildValue("(NN)", events, request_list);
}

static PyObject *bridge_push_result(PyObject *self, PyObject *args) {
	const char *text;
	(void)self;
	if (!PyArg_ParseTuple(args, "s", &text)) {
		return NULL;
	}
	text_message *message = malloc(sizeof(text_message));
	message->id = 0;
	message->text = strdup(text);
	pthread_mutex_lock(&queue_mutex);
	queue_append(&result_queue, message);
	pthread_mutex_unlock(&queue_mutex);
	Py_RETURN_NONE;
}

static PyObject *bridge_counters(PyObject *self, PyObject *args) {
	(void)self;
	(void)args;
	pthread_mutex_lock(&queue_mutex);
	unsigned long long pushed = events_pushed, dropped = events_dropped;
	unsigned long long requests = (unsigned long long)(next_request_id - 1);
	pthread_mutex_unlock(&queue_mutex);
	long long call_ns = __atomic_load_n(&engine_call_ns, __ATOMIC_RELAXED);
	return Py_BuildValue("{sKsKsKsL}", "events_pushed", pushed, "events_dropped", dropped,
			"requests", requests, "engine_call_ns", call_ns);
}

static PyObject *bridge_exit_without_destructors(PyObject *self, PyObject *args) {
	(void)self;
	(void)args;
	__atomic_store_n(&exit_without_destructors, 1, __ATOMIC_RELEASE);
	Py_RETURN_NONE;
}

static PyMethodDef bridge_methods[] = {
	{ "wait_engine", bridge_wait_engine, METH_VARARGS,
			"wait_engine(timeout_s) -> (events, requests): engine events [(kind, name, t_ns)] and "
			"requests [(request_id, json_text)] since the last call; waits up to timeout_s seconds "
			"(GIL released, polling every 1 ms) while both are empty." },
	{ "push_result", bridge_push_result, METH_VARARGS,
			"push_result(json_text): queue one result (a JSON object) for the engine's next poll()." },
	{ "counters", bridge_counters, METH_NOARGS,
			"{'events_pushed', 'events_dropped', 'requests', 'engine_call_ns'}: engine events pushed "
			"and dropped on ring overflow, requests queued, and the engine thread's total time "
			"inside event()/request()/poll() in ns." },
	{ "exit_without_destructors", bridge_exit_without_destructors, METH_NOARGS,
			"A Python thread cannot be stopped (e.g. the model is still loading): when Godot "
			"shuts the library down, end the process with Godot's exit code at once, before C++ "
			"static destructors (torch's) run under that thread's feet." },
	{ NULL, NULL, 0, NULL }
};

static struct PyModuleDef bridge_module_def = {
	PyModuleDef_HEAD_INIT, "_lego_bridge",
	"The C side of lego_embed's Godot bridge: engine events and requests in, results out.", -1,
	bridge_methods, NULL, NULL, NULL, NULL
};

static PyObject *PyInit__lego_bridge(void) {
	return PyModule_Create(&bridge_module_def);
}

/* ----------------------------------------------------------------- Python start-up ---- */

/* sys.path[0:0] = json.loads(config_json).get("sys_path", []) (GIL held). */
static int prepend_sys_path(const char *config_json) {
	PyObject *json = PyImport_ImportModule("json");
	PyObject *config = json ? PyObject_CallMethod(json, "loads", "s", config_json) : NULL;
	PyObject *paths = (config && PyDict_Check(config)) ? PyDict_GetItemString(config, "sys_path") : NULL;
	PyObject *sys_path = PySys_GetObject("path"); /* borrowed */
	int rc = 0;
	if (paths && PyList_Check(paths) && sys_path && PyList_Check(sys_path)) {
		rc = PyList_SetSlice(sys_path, 0, 0, paths);
	}
	Py_XDECREF(config);
	Py_XDECREF(json);
	return (json && config) ? rc : -1;
}

/*
 * Initialise CPython once per process. executable: the python whose packages to use (a venv's
 * bin/python works: its pyvenv.cfg is honoured); empty means the interpreter python3-config
 * found at build time. Returns 0, or -1 with a message in err.
 */
static int start_python(const char *executable, const char *config_json, char *err, size_t err_len) {
	if (executable[0] && access(executable, X_OK) != 0) {
		snprintf(err, err_len, "Python executable '%s' not found; set the project setting "
				"lego_embed/python/executable (or LEGO_EMBED_PYTHON) to a python, e.g. a venv's "
				"bin/python with lego_embed installed, or leave it empty for %s",
				executable, LEGO_FALLBACK_PYTHON);
		return -1;
	}
	/* Godot loaded us without RTLD_GLOBAL; extension modules (torch, numpy) need libpython's
	 * symbols globally visible, so promote the already-linked libpython to global scope. */
	if (dlopen(LEGO_LIBPYTHON_SONAME, RTLD_NOW | RTLD_GLOBAL) == NULL) {
		snprintf(err, err_len, "cannot load %s with RTLD_GLOBAL: %s", LEGO_LIBPYTHON_SONAME, dlerror());
		return -1;
	}
	if (PyImport_AppendInittab("_lego_bridge", PyInit__lego_bridge) < 0) {
		snprintf(err, err_len, "cannot register the _lego_bridge module");
		return -1;
	}
	PyConfig config;
	PyConfig_InitPythonConfig(&config);
	config.install_signal_handlers = 0; /* Godot owns SIGINT and friends */
	config.parse_argv = 0;
	const char *program = executable[0] ? executable : LEGO_FALLBACK_PYTHON;
	PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, program);
	if (!PyStatus_Exception(status)) {
		status = PyConfig_SetBytesString(&config, &config.executable, program);
	}
	if (!PyStatus_Exception(status)) {
		status = Py_InitializeFromConfig(&config);
	}
	PyConfig_Clear(&config);
	if (PyStatus_Exception(status)) {
		snprintf(err, err_len, "Python (%s) failed to start: %s%s%s", program,
				status.func ? status.func : "", status.func ? ": " : "",
				status.err_msg ? status.err_msg : "unknown error");
		return -1;
	}
	/* Still holding the GIL from initialisation: put the configured folders first on sys.path,
	 * then import the engine module. */
	if (prepend_sys_path(config_json) < 0) {
		PyErr_Clear();
	}
	engine_module = PyImport_ImportModule(ENGINE_MODULE);
	if (engine_module == NULL) {
		char reason[ERROR_BYTES / 2];
		take_python_error(reason, sizeof(reason));
		snprintf(err, err_len, "cannot import %s (%s) with %s; install lego_embed in that Python "
				"(pip install -e <repo>) or set lego_embed/python/executable",
				ENGINE_MODULE, reason, program);
	}
	PyEval_SaveThread(); /* from here on the engine never holds the GIL between calls */
	return engine_module ? 0 : -1;
}

/* ------------------------------------------------------------ NativeScript methods ---- */

static void *bridge_create(godot_object *instance, void *method_data) {
	(void)instance;
	(void)method_data;
	return NULL;
}

static void bridge_destroy(godot_object *instance, void *method_data, void *user_data) {
	(void)instance;
	(void)method_data;
	(void)user_data;
}

#define UNUSED_METHOD_ARGS \
	(void)obj;             \
	(void)md;              \
	(void)ud

/* start(config: Dictionary) -> String: JSON {"ok": true, ...} or {"error": message}. The model
 * loads on a Python thread afterwards; poll() reports {"kind": "ready"} or "load_failed". */
static godot_variant method_start(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	UNUSED_METHOD_ARGS;
	char message[ERROR_BYTES];
	if (num_args != 1 || api->godot_variant_get_type(args[0]) != GODOT_VARIANT_TYPE_DICTIONARY) {
		return error_json("LegoBridge.start takes one Dictionary (the project settings)");
	}
	json_buffer config = { 0 };
	if (json_put_variant(&config, args[0], 0) < 0) {
		godot_variant out = error_json(config.error);
		free(config.data);
		return out;
	}
	if (!Py_IsInitialized()) {
		godot_dictionary dict = api->godot_variant_as_dictionary(args[0]);
		godot_variant key, value;
		variant_new_c_string(&key, "python_executable");
		value = api->godot_dictionary_get(&dict, &key);
		char *executable = api->godot_variant_get_type(&value) == GODOT_VARIANT_TYPE_STRING
				? variant_to_c_string(&value)
				: strdup("");
		api->godot_variant_destroy(&key);
		api->godot_variant_destroy(&value);
		api->godot_dictionary_destroy(&dict);
		int rc = start_python(executable, config.data, message, sizeof(message));
		free(executable);
		if (rc < 0) {
			free(config.data);
			return error_json(message);
		}
	}
	if (engine_module == NULL) {
		free(config.data);
		return error_json("Python started earlier but the engine module did not import; restart the game");
	}
	godot_variant out = call_engine("start", config.data);
	free(config.data);
	python_ready = 1;
	return out;
}

/* event(kind: String, name: String) -> null. Never takes the GIL. */
static godot_variant method_event(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	UNUSED_METHOD_ARGS;
	int64_t t_ns = monotonic_ns();
	godot_variant out;
	api->godot_variant_new_nil(&out);
	if (num_args != 2) {
		return out;
	}
	godot_string kind = api->godot_variant_as_string(args[0]);
	godot_string name = api->godot_variant_as_string(args[1]);
	godot_char_string kind_utf8 = api->godot_string_utf8(&kind);
	godot_char_string name_utf8 = api->godot_string_utf8(&name);
	pthread_mutex_lock(&queue_mutex);
	if (ring_count == EVENT_RING_CAPACITY) {
		/* Nobody drains (Python stopped or stalled): keep the newest events. */
		ring_head = (ring_head + 1) % EVENT_RING_CAPACITY;
		ring_count--;
		events_dropped++;
	}
	engine_event *slot = &event_ring[(ring_head + ring_count) % EVENT_RING_CAPACITY];
	snprintf(slot->kind, sizeof(slot->kind), "%s", api->godot_char_string_get_data(&kind_utf8));
	snprintf(slot->name, sizeof(slot->name), "%s", api->godot_char_string_get_data(&name_utf8));
	slot->t_ns = t_ns;
	__atomic_store_n(&ring_count, ring_count + 1, __ATOMIC_RELEASE);
	events_pushed++;
	pthread_mutex_unlock(&queue_mutex);
	api->godot_char_string_destroy(&kind_utf8);
	api->godot_char_string_destroy(&name_utf8);
	api->godot_string_destroy(&kind);
	api->godot_string_destroy(&name);
	add_engine_time(t_ns);
	return out;
}

/* request(npc_id: String, state: Dictionary, actions: Array, deadline_ms: float
 *         [, options: Dictionary]) -> Dictionary:
 * {"request_id": n} (the answer comes through poll()) or {"error": message} when the arguments
 * cannot be serialised. options: {"fallback": String, "supersede": bool} (checked in Python).
 * Never takes the GIL: validation and inference run on Python threads. */
static godot_variant method_request(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	UNUSED_METHOD_ARGS;
	int64_t t0 = monotonic_ns();
	if (!python_ready) {
		return error_dict("LegoBridge.request before a successful start()");
	}
	if (num_args != 4 && num_args != 5) {
		return error_dict("LegoBridge.request takes (npc_id, state, actions, deadline_ms[, options])");
	}
	json_buffer buf = { 0 };
	json_put(&buf, "[", 1);
	for (int i = 0; i < num_args; i++) {
		if (i) {
			json_put(&buf, ",", 1);
		}
		if (json_put_variant(&buf, args[i], 0) < 0) {
			godot_variant out = error_dict(buf.error);
			free(buf.data);
			add_engine_time(t0);
			return out;
		}
	}
	json_put(&buf, "]", 1);
	text_message *message = malloc(sizeof(text_message));
	message->text = buf.data;
	pthread_mutex_lock(&queue_mutex);
	message->id = next_request_id++;
	queue_append(&request_queue, message);
	pthread_mutex_unlock(&queue_mutex);

	godot_dictionary dict;
	api->godot_dictionary_new(&dict);
	godot_variant key, value, out;
	variant_new_c_string(&key, "request_id");
	api->godot_variant_new_int(&value, message->id);
	api->godot_dictionary_set(&dict, &key, &value);
	api->godot_variant_destroy(&key);
	api->godot_variant_destroy(&value);
	api->godot_variant_new_dictionary(&out, &dict);
	api->godot_dictionary_destroy(&dict);
	add_engine_time(t0);
	return out;
}

/* poll() -> Array of Strings: the JSON results Python queued since the last poll (decisions,
 * "ready", "load_failed", "error"). Never takes the GIL. */
static godot_variant method_poll(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	UNUSED_METHOD_ARGS;
	(void)num_args;
	(void)args;
	int64_t t0 = monotonic_ns();
	text_message *results = NULL;
	if (__atomic_load_n(&result_queue.length, __ATOMIC_ACQUIRE) > 0) {
		pthread_mutex_lock(&queue_mutex);
		results = queue_take_all(&result_queue);
		pthread_mutex_unlock(&queue_mutex);
	}
	godot_array arr;
	api->godot_array_new(&arr);
	while (results != NULL) {
		text_message *next = results->next;
		godot_variant item;
		variant_new_c_string(&item, results->text);
		api->godot_array_append(&arr, &item);
		api->godot_variant_destroy(&item);
		free(results->text);
		free(results);
		results = next;
	}
	godot_variant out;
	api->godot_variant_new_array(&out, &arr);
	api->godot_array_destroy(&arr);
	add_engine_time(t0);
	return out;
}

/* stats() -> String: JSON of the bridge's and the runtime's counters (takes the GIL). */
static godot_variant method_stats(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	UNUSED_METHOD_ARGS;
	(void)num_args;
	(void)args;
	return python_ready ? call_engine("stats", NULL) : error_json("the bridge is not started");
}

/* stop() -> String: stops the Python threads after they forwarded every queued event, returns
 * the final stats as JSON (takes the GIL). */
static godot_variant method_stop(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	UNUSED_METHOD_ARGS;
	(void)num_args;
	(void)args;
	return python_ready ? call_engine("stop", NULL) : error_json("the bridge is not started");
}

/* ------------------------------------------------------------------ GDNative entry ---- */

void GDN_EXPORT godot_gdnative_init(godot_gdnative_init_options *options) {
	api = options->api_struct;
	for (unsigned int i = 0; i < api->num_extensions; i++) {
		if (api->extensions[i]->type == GDNATIVE_EXT_NATIVESCRIPT) {
			nativescript_api = (const godot_gdnative_ext_nativescript_api_struct *)api->extensions[i];
		}
	}
}

void GDN_EXPORT godot_gdnative_terminate(godot_gdnative_terminate_options *options) {
	(void)options;
	/* Python is deliberately not finalised: the library is load_once and non-reloadable, and
	 * finalising with torch's threads alive can hang the exit. stop() ends our own threads; if
	 * one could not be stopped, leave now with the game's exit code (see
	 * _lego_bridge.exit_without_destructors). */
	if (__atomic_load_n(&exit_without_destructors, __ATOMIC_ACQUIRE)) {
		int64_t exit_code = 0;
		godot_method_bind *get_exit_code = api->godot_method_bind_get_method("_OS", "get_exit_code");
		godot_object *os = api->godot_global_get_singleton((char *)"OS");
		if (get_exit_code != NULL && os != NULL) {
			api->godot_method_bind_ptrcall(get_exit_code, os, NULL, &exit_code);
		}
		fflush(stdout);
		fflush(stderr);
		_exit((int)exit_code);
	}
}

static void register_method(void *handle, const char *name,
		godot_variant (*fn)(godot_object *, void *, void *, int, godot_variant **)) {
	godot_instance_method method = { NULL, NULL, NULL };
	godot_method_attributes attributes = { GODOT_METHOD_RPC_MODE_DISABLED };
	method.method = fn;
	nativescript_api->godot_nativescript_register_method(handle, "LegoBridge", name, attributes, method);
}

void GDN_EXPORT godot_nativescript_init(void *handle) {
	godot_instance_create_func create = { NULL, NULL, NULL };
	godot_instance_destroy_func destroy = { NULL, NULL, NULL };
	create.create_func = &bridge_create;
	destroy.destroy_func = &bridge_destroy;
	nativescript_api->godot_nativescript_register_class(handle, "LegoBridge", "Reference", create, destroy);
	register_method(handle, "start", &method_start);
	register_method(handle, "event", &method_event);
	register_method(handle, "request", &method_request);
	register_method(handle, "poll", &method_poll);
	register_method(handle, "stats", &method_stats);
	register_method(handle, "stop", &method_stop);
}
