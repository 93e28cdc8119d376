#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "python_embed.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engine_queues.h"
#include "json_text.h"

#ifndef LEGO_LIBPYTHON_SONAME
#error "LEGO_LIBPYTHON_SONAME must name the libpython this library links (set by build.sh)"
#endif
#ifndef LEGO_FALLBACK_PYTHON
#error "LEGO_FALLBACK_PYTHON must name the interpreter found by python3-config (set by build.sh)"
#endif

static PyObject *engine_module = NULL;
static int exit_requested = 0;

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

/* ------------------------------------------------- _lego_bridge: the module Python sees ---- */

static PyObject *texts_as_list(text_message *messages, int with_ids) {
	PyObject *list = PyList_New(0);
	int ok = list != NULL;
	for (text_message *m = messages; ok && m != NULL; m = m->next) {
		PyObject *item = with_ids ? Py_BuildValue("(Ls)", (long long)m->id, m->text) : PyUnicode_FromString(m->text);
		ok = item != NULL && PyList_Append(list, item) == 0;
		Py_XDECREF(item);
	}
	text_message_free_all(messages);
	if (!ok) {
		Py_XDECREF(list);
		return NULL;
	}
	return list;
}

static PyObject *bridge_take_events(PyObject *self, PyObject *args) {
	(void)self;
	(void)args;
	static engine_event batch[EVENT_RING_CAPACITY]; /* callers hold the GIL: never two at once */
	size_t n = queues_take_events(batch);
	PyObject *events = PyList_New((Py_ssize_t)n);
	for (size_t i = 0; events != NULL && i < n; i++) {
		/* a pass name cut at EVENT_NAME_BYTES may end inside a UTF-8 character: replace it */
		PyObject *name = PyUnicode_DecodeUTF8(batch[i].name, (Py_ssize_t)strlen(batch[i].name), "replace");
		PyObject *item = name ? Py_BuildValue("(sNL)", batch[i].kind, name, (long long)batch[i].t_ns) : NULL;
		if (item == NULL) {
			Py_CLEAR(events);
			break;
		}
		PyList_SET_ITEM(events, (Py_ssize_t)i, item);
	}
	return events;
}

static PyObject *bridge_has_events(PyObject *self, PyObject *args) {
	(void)self;
	(void)args;
	return PyBool_FromLong(queues_has_events());
}

static PyObject *bridge_events_bell(PyObject *self, PyObject *args) {
	(void)self;
	(void)args;
	int fd = queues_events_bell();
	if (fd < 0) {
		return PyErr_Format(PyExc_OSError, "the bridge could not make its eventfds (%s); the "
				"NPC model cannot follow the engine's frames", strerror(queues_bells_error()));
	}
	return PyLong_FromLong(fd);
}

static PyObject *bridge_arm_events_bell(PyObject *self, PyObject *args) {
	(void)self;
	(void)args;
	queues_arm_events_bell();
	Py_RETURN_NONE;
}

static PyObject *bridge_wait_inbox(PyObject *self, PyObject *args) {
	double timeout_s;
	(void)self;
	if (!PyArg_ParseTuple(args, "d", &timeout_s)) {
		return NULL;
	}
	text_message *requests = NULL, *gpu_frames = NULL;
	int64_t give_up_ns = monotonic_ns() + (int64_t)(timeout_s * 1e9);
	Py_BEGIN_ALLOW_THREADS;
	queues_wait_inbox(give_up_ns, &requests, &gpu_frames);
	Py_END_ALLOW_THREADS;
	PyObject *request_list = texts_as_list(requests, 1);
	PyObject *gpu_list = texts_as_list(gpu_frames, 0);
	if (request_list == NULL || gpu_list == NULL) {
		Py_XDECREF(request_list);
		Py_XDECREF(gpu_list);
		return NULL;
	}
	return Py_BuildValue("(NN)", request_list, gpu_list);
}

static PyObject *bridge_push_result(PyObject *self, PyObject *args) {
	const char *text;
	(void)self;
	if (!PyArg_ParseTuple(args, "s", &text)) {
		return NULL;
	}
	queues_push_result(text);
	Py_RETURN_NONE;
}

static PyObject *bridge_counters(PyObject *self, PyObject *args) {
	(void)self;
	(void)args;
	queue_counters c = queues_counters();
	return Py_BuildValue("{sKsKsKsKsKsKsL}", "events_pushed", (unsigned long long)c.events_pushed,
			"events_dropped", (unsigned long long)c.events_dropped, "events_refused",
			(unsigned long long)c.events_refused, "event_bell_rings",
			(unsigned long long)c.event_bell_rings, "requests",
			(unsigned long long)c.requests, "gpu_frames", (unsigned long long)c.gpu_frames,
			"engine_call_ns", (long long)c.engine_call_ns);
}

static PyObject *bridge_exit_without_destructors(PyObject *self, PyObject *args) {
	(void)self;
	(void)args;
	__atomic_store_n(&exit_requested, 1, __ATOMIC_RELEASE);
	Py_RETURN_NONE;
}

static PyMethodDef bridge_methods[] = {
	{ "take_events", bridge_take_events, METH_NOARGS,
			"take_events() -> [(kind, name, t_ns)]: the engine events queued since the last call, "
			"oldest first; never waits (the runtime's worker calls it between subtasks)." },
	{ "has_events", bridge_has_events, METH_NOARGS,
			"has_events() -> bool: whether engine events are queued (one atomic read)." },
	{ "events_bell", bridge_events_bell, METH_NOARGS,
			"events_bell() -> int: a file descriptor that becomes readable when an event that can "
			"open a gap is queued after arm_events_bell()." },
	{ "arm_events_bell", bridge_arm_events_bell, METH_NOARGS,
			"arm_events_bell(): clears the bell and asks the engine to ring it for the next "
			"gap-opening event; call it, then has_events(), before sleeping on the bell." },
	{ "wait_inbox", bridge_wait_inbox, METH_VARARGS,
			"wait_inbox(timeout_s) -> (requests, gpu_frames): requests [(request_id, json_text)] "
			"and captured GPU timestamps [json_text] since the last call; sleeps up to timeout_s "
			"seconds (GIL released) on the inbox bell while both are empty." },
	{ "push_result", bridge_push_result, METH_VARARGS,
			"push_result(json_text): queue one result (a JSON object) for the engine's next poll()." },
	{ "counters", bridge_counters, METH_NOARGS,
			"{'events_pushed', 'events_dropped', 'events_refused', 'event_bell_rings', 'requests', "
			"'gpu_frames', 'engine_call_ns'}: engine events pushed, dropped on ring overflow and "
			"refused (an unknown kind), the events that rang the worker's armed bell, requests and "
			"GPU-timestamp frames queued, "
			"and the engine thread's total time inside the bridge's per-frame calls in ns." },
	{ "exit_without_destructors", bridge_exit_without_destructors, METH_NOARGS,
			"A Python thread cannot be stopped (e.g. the model is still loading): when the engine "
			"unloads the library, end the process with the game's exit code at once, before C++ "
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

int python_start(const char *executable, const char *config_json, char *err, size_t err_len) {
	if (Py_IsInitialized()) {
		if (engine_module == NULL) {
			snprintf(err, err_len, "Python started earlier but the engine module did not import; restart the game");
			return -1;
		}
		return 0;
	}
	if (executable[0] && access(executable, X_OK) != 0) {
		snprintf(err, err_len, "Python executable '%s' not found; set the project setting "
				"lego_embed/python/executable (or LEGO_EMBED_PYTHON) to a python, e.g. a venv's "
				"bin/python with lego_embed installed, or leave it empty for %s",
				executable, LEGO_FALLBACK_PYTHON);
		return -1;
	}
	/* The engine loaded us without RTLD_GLOBAL; extension modules (torch, numpy) need
	 * libpython's symbols globally visible, so promote the already-linked libpython. */
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
	config.install_signal_handlers = 0; /* the engine owns SIGINT and friends */
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
		char reason[JSON_ERROR_BYTES / 2];
		take_python_error(reason, sizeof(reason));
		snprintf(err, err_len, "cannot import %s (%s) with %s; install lego_embed in that Python "
				"(pip install -e <repo>) or set lego_embed/python/executable",
				ENGINE_MODULE, reason, program);
	}
	PyEval_SaveThread(); /* from here on the engine never holds the GIL between calls */
	return engine_module ? 0 : -1;
}

char *python_call_engine(const char *function, const char *json_argument) {
	PyGILState_STATE gil = PyGILState_Ensure();
	char message[JSON_ERROR_BYTES];
	char *out;
	PyObject *result = json_argument ? PyObject_CallMethod(engine_module, function, "s", json_argument)
									 : PyObject_CallMethod(engine_module, function, NULL);
	const char *text = (result && PyUnicode_Check(result)) ? PyUnicode_AsUTF8(result) : NULL;
	if (text != NULL) {
		out = strdup(text);
	} else {
		if (result != NULL && !PyErr_Occurred()) {
			PyErr_Format(PyExc_TypeError, "%s.%s must return a JSON str", ENGINE_MODULE, function);
		}
		take_python_error(message, sizeof(message));
		out = json_error_object(message);
	}
	Py_XDECREF(result);
	PyGILState_Release(gil);
	return out;
}

int python_exit_requested(void) {
	return __atomic_load_n(&exit_requested, __ATOMIC_ACQUIRE);
}
