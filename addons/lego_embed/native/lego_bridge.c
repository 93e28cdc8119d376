/*
 * lego_bridge: a GDNative library that embeds CPython inside Godot 3 and exposes the NativeScript
 * class "LegoBridge", which forwards to the Python module lego_embed.engines.godot.
 *
 * Threading model
 *  - Python is initialised on the first start() call from the engine's main thread; right after
 *    initialisation the main thread releases the GIL (PyEval_SaveThread). Every later call from
 *    the engine takes the GIL with PyGILState_Ensure and gives it back before returning, so the
 *    GIL is never held while control is in the engine.
 *  - event(kind, name) never touches Python: it stamps CLOCK_MONOTONIC (the clock behind Python's
 *    time.monotonic_ns) and pushes into a mutex-protected ring that a Python pump thread drains
 *    through the built-in module _lego_bridge (wait_events releases the GIL and polls the ring
 *    every PUMP_POLL_NS, so the engine thread never makes a wake-up syscall).
 *  - poll() takes the GIL only when Python has announced finished results (notify_results),
 *    so a frame without news costs one atomic load.
 *  - Every Python exception is caught here: the caller gets {"error": message} and Godot's output
 *    gets an error line. Nothing Python raises can unwind into the engine.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
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
#define PUMP_POLL_NS 250000 /* the pump looks at the ring every 0.25 ms */

static const godot_gdnative_core_api_struct *api = NULL;
static const godot_gdnative_ext_nativescript_api_struct *nativescript_api = NULL;

/* ---------------------------------------------------------------- event ring (no GIL) ---- */

typedef struct {
	char kind[16];
	char name[EVENT_NAME_BYTES];
	int64_t t_ns;
} engine_event;

static engine_event event_ring[EVENT_RING_CAPACITY];
static size_t ring_head = 0; /* next slot to read */
static size_t ring_count = 0;
static uint64_t events_pushed = 0;
static uint64_t events_dropped = 0;
static int64_t event_call_ns = 0; /* main-thread time inside event(), for the cost report */
static pthread_mutex_t ring_mutex = PTHREAD_MUTEX_INITIALIZER;

static int results_pending = 0; /* set by Python (atomic), cleared by poll() */
static int python_ready = 0;    /* Python initialised and the engine module imported */
static PyObject *engine_module = NULL;

static int64_t monotonic_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void push_event(const char *kind, const char *name, int64_t t_ns) {
	pthread_mutex_lock(&ring_mutex);
	if (ring_count == EVENT_RING_CAPACITY) {
		/* Nobody drains (Python not started or stalled): keep the newest events. */
		ring_head = (ring_head + 1) % EVENT_RING_CAPACITY;
		ring_count--;
		events_dropped++;
	}
	engine_event *slot = &event_ring[(ring_head + ring_count) % EVENT_RING_CAPACITY];
	snprintf(slot->kind, sizeof(slot->kind), "%s", kind);
	snprintf(slot->name, sizeof(slot->name), "%s", name);
	slot->t_ns = t_ns;
	ring_count++;
	events_pushed++;
	pthread_mutex_unlock(&ring_mutex);
}

/* ------------------------------------------------- _lego_bridge: the module Python sees ---- */

static PyObject *bridge_wait_events(PyObject *self, PyObject *args) {
	double timeout_s;
	(void)self;
	if (!PyArg_ParseTuple(args, "d", &timeout_s)) {
		return NULL;
	}
	static engine_event batch[EVENT_RING_CAPACITY];
	size_t n = 0;
	int64_t give_up_ns = monotonic_ns() + (int64_t)(timeout_s * 1e9);
	Py_BEGIN_ALLOW_THREADS;
	for (;;) {
		/* Poll instead of waiting on a condition variable: signalling a waiter from event()
		 * would put a futex wake-up (and often a preemption) on the engine's main thread. */
		if (__atomic_load_n(&ring_count, __ATOMIC_ACQUIRE) > 0 || monotonic_ns() >= give_up_ns) {
			break;
		}
		struct timespec nap = { 0, PUMP_POLL_NS };
		nanosleep(&nap, NULL);
	}
	pthread_mutex_lock(&ring_mutex);
	while (ring_count > 0) {
		batch[n++] = event_ring[ring_head];
		ring_head = (ring_head + 1) % EVENT_RING_CAPACITY;
		ring_count--;
	}
	pthread_mutex_unlock(&ring_mutex);
	Py_END_ALLOW_THREADS;
	PyObject *events = PyList_New((Py_ssize_t)n);
	if (events == NULL) {
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		PyObject *item = Py_BuildValue("(ssL)", batch[i].kind, batch[i].name, (long long)batch[i].t_ns);
		if (item == NULL) {
			Py_DECREF(events);
			return NULL;
		}
		PyList_SET_ITEM(events, (Py_ssize_t)i, item);
	}
	return events;
}

static PyObject *bridge_notify_results(PyObject *self, PyObject *args) {
	(void)self;
	(void)args;
	__atomic_store_n(&results_pending, 1, __ATOMIC_RELEASE);
	Py_RETURN_NONE;
}

static PyObject *bridge_event_counts(PyObject *self, PyObject *args) {
	(void)self;
	(void)args;
	pthread_mutex_lock(&ring_mutex);
	unsigned long long pushed = events_pushed, dropped = events_dropped;
	pthread_mutex_unlock(&ring_mutex);
	long long call_ns = __atomic_load_n(&event_call_ns, __ATOMIC_RELAXED);
	return Py_BuildValue("{sKsKsL}", "pushed", pushed, "dropped", dropped, "event_call_ns", call_ns);
}

static PyMethodDef bridge_methods[] = {
	{ "wait_events", bridge_wait_events, METH_VARARGS,
			"wait_events(timeout_s) -> list of (kind, name, t_ns): engine events since the last call; "
			"waits up to timeout_s seconds (GIL released, polling every 0.25 ms) when there are none." },
	{ "notify_results", bridge_notify_results, METH_NOARGS,
			"Tell the engine side that poll() has results; call after queueing them." },
	{ "event_counts", bridge_event_counts, METH_NOARGS,
			"{'pushed', 'dropped', 'event_call_ns'}: engine events pushed into the ring, dropped on "
			"overflow, and the engine thread's total time inside event() in ns." },
	{ NULL, NULL, 0, NULL }
};

static struct PyModuleDef bridge_module_def = {
	PyModuleDef_HEAD_INIT, "_lego_bridge",
	"The C side of lego_embed's Godot bridge: engine events in, result notifications out.", -1,
	bridge_methods, NULL, NULL, NULL, NULL
};

static PyObject *PyInit__lego_bridge(void) {
	return PyModule_Create(&bridge_module_def);
}

/* ------------------------------------------------------------------ string helpers ---- */

/* UTF-8 copy of a Godot string into a malloc'd C string (caller frees). */
static char *godot_string_to_c(const godot_string *s) {
	godot_char_string utf8 = api->godot_string_utf8(s);
	const char *data = api->godot_char_string_get_data(&utf8);
	godot_int len = api->godot_char_string_length(&utf8);
	char *copy = malloc((size_t)len + 1);
	memcpy(copy, data, (size_t)len);
	copy[len] = '\0';
	api->godot_char_string_destroy(&utf8);
	return copy;
}

static char *variant_to_c_string(const godot_variant *v) {
	godot_string s = api->godot_variant_as_string(v);
	char *out = godot_string_to_c(&s);
	api->godot_string_destroy(&s);
	return out;
}

static void variant_new_c_string(godot_variant *out, const char *text, Py_ssize_t len) {
	godot_string s = api->godot_string_chars_to_utf8_with_len(text, (godot_int)len);
	api->godot_variant_new_string(out, &s);
	api->godot_string_destroy(&s);
}

static void print_godot_error(const char *message, const char *where) {
	api->godot_print_error(message, where, __FILE__, __LINE__);
}

/* Fetch and clear the current Python exception as "Type: message" (GIL held). */
static void take_python_error(char *out, size_t out_len) {
	PyObject *type, *value, *traceback;
	PyErr_Fetch(&type, &value, &traceback);
	PyErr_NormalizeException(&type, &value, &traceback);
	const char *type_name = type ? ((PyTypeObject *)type)->tp_name : "Exception";
	const char *text = NULL;
	PyObject *str = value ? PyObject_Str(value) : NULL;
	if (str != NULL) {
		text = PyUnicode_AsUTF8(str);
	}
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

/* ------------------------------------------------------ Variant <-> Python (GIL held) ---- */

static PyObject *variant_to_python(const godot_variant *v, int depth);

static PyObject *array_to_python(const godot_array *arr, int depth) {
	godot_int size = api->godot_array_size(arr);
	PyObject *list = PyList_New(size);
	if (list == NULL) {
		return NULL;
	}
	for (godot_int i = 0; i < size; i++) {
		godot_variant item = api->godot_array_get(arr, i);
		PyObject *py_item = variant_to_python(&item, depth + 1);
		api->godot_variant_destroy(&item);
		if (py_item == NULL) {
			Py_DECREF(list);
			return NULL;
		}
		PyList_SET_ITEM(list, i, py_item);
	}
	return list;
}

static PyObject *dictionary_to_python(const godot_dictionary *dict, int depth) {
	PyObject *out = PyDict_New();
	if (out == NULL) {
		return NULL;
	}
	godot_array keys = api->godot_dictionary_keys(dict);
	godot_int size = api->godot_array_size(&keys);
	for (godot_int i = 0; i < size; i++) {
		godot_variant key = api->godot_array_get(&keys, i);
		godot_variant value = api->godot_dictionary_get(dict, &key);
		PyObject *py_key = variant_to_python(&key, depth + 1);
		PyObject *py_value = py_key ? variant_to_python(&value, depth + 1) : NULL;
		api->godot_variant_destroy(&key);
		api->godot_variant_destroy(&value);
		if (py_value == NULL || PyDict_SetItem(out, py_key, py_value) < 0) {
			Py_XDECREF(py_key);
			Py_XDECREF(py_value);
			Py_DECREF(out);
			api->godot_array_destroy(&keys);
			return NULL;
		}
		Py_DECREF(py_key);
		Py_DECREF(py_value);
	}
	api->godot_array_destroy(&keys);
	return out;
}

static PyObject *variant_to_python(const godot_variant *v, int depth) {
	if (depth > 32) {
		PyErr_SetString(PyExc_ValueError, "Godot value nested deeper than 32 levels");
		return NULL;
	}
	switch (api->godot_variant_get_type(v)) {
		case GODOT_VARIANT_TYPE_NIL:
			Py_RETURN_NONE;
		case GODOT_VARIANT_TYPE_BOOL:
			return PyBool_FromLong(api->godot_variant_as_bool(v));
		case GODOT_VARIANT_TYPE_INT:
			return PyLong_FromLongLong((long long)api->godot_variant_as_int(v));
		case GODOT_VARIANT_TYPE_REAL:
			return PyFloat_FromDouble(api->godot_variant_as_real(v));
		case GODOT_VARIANT_TYPE_STRING: {
			char *text = variant_to_c_string(v);
			PyObject *out = PyUnicode_FromString(text);
			free(text);
			return out;
		}
		case GODOT_VARIANT_TYPE_VECTOR2: {
			godot_vector2 vec = api->godot_variant_as_vector2(v);
			return Py_BuildValue("(dd)", (double)api->godot_vector2_get_x(&vec),
					(double)api->godot_vector2_get_y(&vec));
		}
		case GODOT_VARIANT_TYPE_VECTOR3: {
			godot_vector3 vec = api->godot_variant_as_vector3(v);
			return Py_BuildValue("(ddd)", (double)api->godot_vector3_get_axis(&vec, GODOT_VECTOR3_AXIS_X),
					(double)api->godot_vector3_get_axis(&vec, GODOT_VECTOR3_AXIS_Y),
					(double)api->godot_vector3_get_axis(&vec, GODOT_VECTOR3_AXIS_Z));
		}
		case GODOT_VARIANT_TYPE_DICTIONARY: {
			godot_dictionary dict = api->godot_variant_as_dictionary(v);
			PyObject *out = dictionary_to_python(&dict, depth);
			api->godot_dictionary_destroy(&dict);
			return out;
		}
		case GODOT_VARIANT_TYPE_ARRAY: {
			godot_array arr = api->godot_variant_as_array(v);
			PyObject *out = array_to_python(&arr, depth);
			api->godot_array_destroy(&arr);
			return out;
		}
		case GODOT_VARIANT_TYPE_POOL_STRING_ARRAY:
		case GODOT_VARIANT_TYPE_POOL_INT_ARRAY:
		case GODOT_VARIANT_TYPE_POOL_REAL_ARRAY: {
			/* Pool arrays convert to a plain Array first; their items are strings/ints/reals. */
			godot_array arr = api->godot_variant_as_array(v);
			PyObject *out = array_to_python(&arr, depth);
			api->godot_array_destroy(&arr);
			return out;
		}
		default: {
			char *text = variant_to_c_string(v);
			PyErr_Format(PyExc_TypeError,
					"Godot value '%s' (Variant type %d) cannot be passed to Python; use bool, int, "
					"float, String, Vector2/3, Array or Dictionary",
					text, (int)api->godot_variant_get_type(v));
			free(text);
			return NULL;
		}
	}
}

/* Python value -> Godot Variant; returns 0 on success, -1 with a Python exception set. */
static int python_to_variant(PyObject *obj, godot_variant *out, int depth) {
	if (depth > 32) {
		PyErr_SetString(PyExc_ValueError, "Python value nested deeper than 32 levels");
		return -1;
	}
	if (obj == Py_None) {
		api->godot_variant_new_nil(out);
	} else if (PyBool_Check(obj)) {
		api->godot_variant_new_bool(out, obj == Py_True);
	} else if (PyLong_Check(obj)) {
		long long value = PyLong_AsLongLong(obj);
		if (value == -1 && PyErr_Occurred()) {
			return -1;
		}
		api->godot_variant_new_int(out, (int64_t)value);
	} else if (PyFloat_Check(obj)) {
		api->godot_variant_new_real(out, PyFloat_AS_DOUBLE(obj));
	} else if (PyUnicode_Check(obj)) {
		Py_ssize_t len;
		const char *text = PyUnicode_AsUTF8AndSize(obj, &len);
		if (text == NULL) {
			return -1;
		}
		variant_new_c_string(out, text, len);
	} else if (PyDict_Check(obj)) {
		godot_dictionary dict;
		api->godot_dictionary_new(&dict);
		PyObject *key, *value;
		Py_ssize_t pos = 0;
		while (PyDict_Next(obj, &pos, &key, &value)) {
			godot_variant g_key, g_value;
			if (python_to_variant(key, &g_key, depth + 1) < 0) {
				api->godot_dictionary_destroy(&dict);
				return -1;
			}
			if (python_to_variant(value, &g_value, depth + 1) < 0) {
				api->godot_variant_destroy(&g_key);
				api->godot_dictionary_destroy(&dict);
				return -1;
			}
			api->godot_dictionary_set(&dict, &g_key, &g_value);
			api->godot_variant_destroy(&g_key);
			api->godot_variant_destroy(&g_value);
		}
		api->godot_variant_new_dictionary(out, &dict);
		api->godot_dictionary_destroy(&dict);
	} else if (PyList_Check(obj) || PyTuple_Check(obj)) {
		PyObject *seq = PySequence_Fast(obj, "expected a sequence");
		if (seq == NULL) {
			return -1;
		}
		godot_array arr;
		api->godot_array_new(&arr);
		Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
		for (Py_ssize_t i = 0; i < n; i++) {
			godot_variant item;
			if (python_to_variant(PySequence_Fast_GET_ITEM(seq, i), &item, depth + 1) < 0) {
				api->godot_array_destroy(&arr);
				Py_DECREF(seq);
				return -1;
			}
			api->godot_array_append(&arr, &item);
			api->godot_variant_destroy(&item);
		}
		Py_DECREF(seq);
		api->godot_variant_new_array(out, &arr);
		api->godot_array_destroy(&arr);
	} else {
		PyObject *str = PyObject_Str(obj);
		if (str == NULL) {
			return -1;
		}
		int rc = python_to_variant(str, out, depth + 1);
		Py_DECREF(str);
		return rc;
	}
	return 0;
}

/* {"error": message} as a Variant. */
static godot_variant error_dict(const char *message) {
	godot_dictionary dict;
	api->godot_dictionary_new(&dict);
	godot_variant key, value;
	variant_new_c_string(&key, "error", 5);
	variant_new_c_string(&value, message, (Py_ssize_t)strlen(message));
	api->godot_dictionary_set(&dict, &key, &value);
	api->godot_variant_destroy(&key);
	api->godot_variant_destroy(&value);
	godot_variant out;
	api->godot_variant_new_dictionary(&out, &dict);
	api->godot_dictionary_destroy(&dict);
	return out;
}

/* {"error": message} as a Variant, and the same message as an error line in Godot's output. */
static godot_variant error_result(const char *message, const char *where) {
	print_godot_error(message, where);
	return error_dict(message);
}

/*
 * Call ENGINE_MODULE.<function>(*args) with the GIL held and convert the result. Any Python
 * exception (in the call or the conversion) becomes {"error": "Type: message"}.
 */
static godot_variant call_engine(const char *function, PyObject *args) {
	char message[ERROR_BYTES];
	godot_variant out;
	PyObject *result = PyObject_CallMethod(engine_module, function, "(O)", args);
	if (result != NULL && python_to_variant(result, &out, 0) == 0) {
		Py_DECREF(result);
		return out;
	}
	Py_XDECREF(result);
	take_python_error(message, sizeof(message));
	return error_result(message, function);
}

/* ----------------------------------------------------------------- Python start-up ---- */

static int prepend_sys_path(const char *dir) {
	PyObject *sys_path = PySys_GetObject("path"); /* borrowed */
	PyObject *entry = PyUnicode_FromString(dir);
	int rc = (sys_path && entry) ? PyList_Insert(sys_path, 0, entry) : -1;
	Py_XDECREF(entry);
	return rc;
}

/*
 * Initialise CPython once per process. executable: the python whose packages to use (a venv's
 * bin/python works: its pyvenv.cfg is honoured); empty means the interpreter python3-config
 * found at build time. Returns 0, or -1 with a message in err.
 */
static int start_python(const char *executable, char *err, size_t err_len) {
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
	const char *program = (executable && executable[0]) ? executable : LEGO_FALLBACK_PYTHON;
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
	return 0;
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

static int check_args(int num_args, godot_variant **args, int want, const godot_variant_type *types,
		const char *method, godot_variant *error_out) {
	char message[ERROR_BYTES];
	if (num_args != want) {
		snprintf(message, sizeof(message), "LegoBridge.%s takes %d arguments, got %d", method, want, num_args);
		*error_out = error_result(message, method);
		return -1;
	}
	for (int i = 0; i < want; i++) {
		if (api->godot_variant_get_type(args[i]) != types[i]) {
			snprintf(message, sizeof(message), "LegoBridge.%s: argument %d has Variant type %d, expected %d",
					method, i + 1, (int)api->godot_variant_get_type(args[i]), (int)types[i]);
			*error_out = error_result(message, method);
			return -1;
		}
	}
	return 0;
}

/* start(config: Dictionary) -> Dictionary: {"ok": true} or {"error": message}. Loading continues
 * in Python's background thread; poll() later reports "ready" or "load_failed". */
static godot_variant method_start(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	(void)obj;
	(void)md;
	(void)ud;
	static const godot_variant_type types[] = { GODOT_VARIANT_TYPE_DICTIONARY };
	godot_variant out;
	if (check_args(num_args, args, 1, types, "start", &out) < 0) {
		return out;
	}
	char message[ERROR_BYTES];
	godot_dictionary config = api->godot_variant_as_dictionary(args[0]);
	if (!Py_IsInitialized()) {
		godot_variant key, value;
		variant_new_c_string(&key, "python_executable", 17);
		value = api->godot_dictionary_get(&config, &key);
		char *executable = api->godot_variant_get_type(&value) == GODOT_VARIANT_TYPE_STRING
				? variant_to_c_string(&value)
				: strdup("");
		api->godot_variant_destroy(&key);
		api->godot_variant_destroy(&value);
		int rc = -1;
		if (executable[0] && access(executable, X_OK) != 0) {
			snprintf(message, sizeof(message), "Python executable '%s' not found; set the project "
					"setting lego_embed/python/executable (or LEGO_EMBED_PYTHON) to a python, e.g. a "
					"venv's bin/python with lego_embed installed, or leave it empty for %s",
					executable, LEGO_FALLBACK_PYTHON);
		} else {
			rc = start_python(executable, message, sizeof(message));
		}
		free(executable);
		if (rc < 0) {
			api->godot_dictionary_destroy(&config);
			return error_dict(message);
		}
		PyEval_SaveThread(); /* from here on the engine never holds the GIL between calls */
	}
	PyGILState_STATE gil = PyGILState_Ensure();
	PyObject *py_config = dictionary_to_python(&config, 0);
	api->godot_dictionary_destroy(&config);
	if (py_config == NULL) {
		take_python_error(message, sizeof(message));
		out = error_dict(message);
	} else {
		PyObject *paths = PyDict_GetItemString(py_config, "sys_path"); /* borrowed */
		if (paths != NULL && PyList_Check(paths)) {
			for (Py_ssize_t i = PyList_GET_SIZE(paths) - 1; i >= 0; i--) {
				PyObject *p = PyList_GET_ITEM(paths, i);
				if (PyUnicode_Check(p)) {
					prepend_sys_path(PyUnicode_AsUTF8(p));
				}
			}
		}
		if (engine_module == NULL) {
			engine_module = PyImport_ImportModule(ENGINE_MODULE);
		}
		if (engine_module == NULL) {
			take_python_error(message, sizeof(message));
			char full[ERROR_BYTES + 256];
			snprintf(full, sizeof(full), "cannot import %s (%s); is lego_embed installed in that "
					"Python, or its folder listed in lego_embed/python/sys_path?", ENGINE_MODULE, message);
			full[ERROR_BYTES - 1] = '\0';
			out = error_dict(full);
		} else {
			python_ready = 1;
			out = call_engine("start", py_config);
		}
		Py_DECREF(py_config);
	}
	PyGILState_Release(gil);
	return out;
}

/* event(kind: String, name: String) -> null. Never takes the GIL. */
static godot_variant method_event(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	(void)obj;
	(void)md;
	(void)ud;
	int64_t t_ns = monotonic_ns();
	godot_variant out;
	if (num_args != 2) {
		return error_result("LegoBridge.event takes (kind: String, name: String)", "event");
	}
	char *kind = variant_to_c_string(args[0]);
	char *name = variant_to_c_string(args[1]);
	push_event(kind, name, t_ns);
	free(kind);
	free(name);
	__atomic_add_fetch(&event_call_ns, monotonic_ns() - t_ns, __ATOMIC_RELAXED);
	api->godot_variant_new_nil(&out);
	return out;
}

/* poll() -> Array of Dictionaries (decisions and status reports); empty without the GIL when
 * Python has nothing new. */
static godot_variant method_poll(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	(void)obj;
	(void)md;
	(void)ud;
	(void)num_args;
	(void)args;
	godot_variant out;
	if (!python_ready || !__atomic_exchange_n(&results_pending, 0, __ATOMIC_ACQ_REL)) {
		godot_array empty;
		api->godot_array_new(&empty);
		api->godot_variant_new_array(&out, &empty);
		api->godot_array_destroy(&empty);
		return out;
	}
	PyGILState_STATE gil = PyGILState_Ensure();
	char message[ERROR_BYTES];
	PyObject *result = PyObject_CallMethod(engine_module, "poll", NULL);
	if (result != NULL && python_to_variant(result, &out, 0) == 0) {
		Py_DECREF(result);
	} else {
		Py_XDECREF(result);
		take_python_error(message, sizeof(message));
		out = error_result(message, "poll");
	}
	PyGILState_Release(gil);
	return out;
}

/* request(npc_id: String, state: Dictionary, actions: Array, deadline_ms: float) -> Dictionary:
 * {"request_id": n} or {"error": message}. Validation runs here; inference never does. */
static godot_variant method_request(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	(void)obj;
	(void)md;
	(void)ud;
	if (!python_ready) {
		return error_result("LegoBridge.request before a successful start()", "request");
	}
	if (num_args != 4) {
		return error_result("LegoBridge.request takes (npc_id, state, actions, deadline_ms)", "request");
	}
	PyGILState_STATE gil = PyGILState_Ensure();
	godot_variant out;
	char message[ERROR_BYTES];
	PyObject *items[4] = { NULL, NULL, NULL, NULL };
	int ok = 1;
	for (int i = 0; i < 4 && ok; i++) {
		items[i] = variant_to_python(args[i], 0);
		ok = items[i] != NULL;
	}
	if (ok) {
		PyObject *result = PyObject_CallMethod(engine_module, "request", "(OOOO)", items[0], items[1],
				items[2], items[3]);
		if (result != NULL && python_to_variant(result, &out, 0) == 0) {
			Py_DECREF(result);
		} else {
			Py_XDECREF(result);
			ok = 0;
		}
	}
	if (!ok) {
		take_python_error(message, sizeof(message));
		out = error_result(message, "request");
	}
	for (int i = 0; i < 4; i++) {
		Py_XDECREF(items[i]);
	}
	PyGILState_Release(gil);
	return out;
}

static godot_variant call_without_args(const char *function) {
	if (!python_ready) {
		godot_dictionary empty;
		godot_variant out;
		api->godot_dictionary_new(&empty);
		api->godot_variant_new_dictionary(&out, &empty);
		api->godot_dictionary_destroy(&empty);
		return out;
	}
	PyGILState_STATE gil = PyGILState_Ensure();
	godot_variant out;
	char message[ERROR_BYTES];
	PyObject *result = PyObject_CallMethod(engine_module, function, NULL);
	if (result != NULL && python_to_variant(result, &out, 0) == 0) {
		Py_DECREF(result);
	} else {
		Py_XDECREF(result);
		take_python_error(message, sizeof(message));
		out = error_result(message, function);
	}
	PyGILState_Release(gil);
	return out;
}

/* stats() -> Dictionary: the runtime's and the bridge's counters. */
static godot_variant method_stats(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	(void)obj;
	(void)md;
	(void)ud;
	(void)num_args;
	(void)args;
	return call_without_args("stats");
}

/* stop() -> Dictionary: stops the runtime's threads (bounded wait); {} or {"error": ...}. */
static godot_variant method_stop(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	(void)obj;
	(void)md;
	(void)ud;
	(void)num_args;
	(void)args;
	return call_without_args("stop");
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
	 * finalising with torch's threads alive can hang the exit. stop() ends our own threads. */
	api = NULL;
	nativescript_api = NULL;
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
	register_method(handle, "poll", &method_poll);
	register_method(handle, "request", &method_request);
	register_method(handle, "stats", &method_stats);
	register_method(handle, "stop", &method_stop);
}
