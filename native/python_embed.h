/*
 * python_embed: CPython inside the game process, shared by the Godot 3 and Godot 4 bridges.
 *  - python_start() initialises Python once per process on the engine's main thread (libpython
 *    promoted to RTLD_GLOBAL first, so torch's extension modules resolve its symbols), registers
 *    the built-in module _lego_bridge (engine_queues seen from Python), imports the engine module
 *    lego_embed.engines.godot and releases the GIL for good.
 *  - python_call_engine() takes the GIL, calls one function of the engine module with a JSON
 *    argument and returns its JSON answer; every Python exception becomes {"error": "Type: msg"}.
 *    Only start(), stats() and stop() use it: the per-frame calls never touch Python.
 */
#ifndef LEGO_PYTHON_EMBED_H
#define LEGO_PYTHON_EMBED_H

#include <stddef.h>

#define ENGINE_MODULE "lego_embed.engines.godot"

/* executable: the python whose packages to use (a venv's bin/python: its pyvenv.cfg is
 * honoured); "" means the interpreter found at build time. config_json: the settings, whose
 * "sys_path" list is put first on sys.path. Returns 0 (also when Python already runs), or -1
 * with a message in err. */
int python_start(const char *executable, const char *config_json, char *err, size_t err_len);

/* ENGINE_MODULE.<function>(json_argument) (no argument when NULL) -> malloc'd JSON text. */
char *python_call_engine(const char *function, const char *json_argument);

/* Python asked (_lego_bridge.exit_without_destructors) to end the process at once when the
 * engine unloads the library: one of its threads cannot be stopped (the model is still loading),
 * and C++ static destructors (torch's) must not run under that thread's feet. */
int python_exit_requested(void);

#endif
