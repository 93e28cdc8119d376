/*
 * lego_bridge (Godot 3): the GDNative glue of lego_embed's bridge. It exposes the NativeScript
 * class "LegoBridge" and turns Godot 3 Variants into the JSON texts the shared C core queues
 * (native/engine_queues.c) and the embedded Python reads (native/python_embed.c).
 *
 * Threading model (the same as the Godot 4 bridge): the engine's main thread never takes the GIL
 * after start(). event() stamps CLOCK_MONOTONIC and appends to the event ring; request()
 * serialises its arguments to JSON and queues them; poll() hands over the results Python queued.
 * Only start(), stats() and stop() take the GIL; every Python exception comes back as
 * {"error": "Type: message"} and nothing unwinds into the engine.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gdnative_api_struct.gen.h>

#include "engine_queues.h"
#include "json_text.h"
#include "python_embed.h"

static const godot_gdnative_core_api_struct *api = NULL;
static const godot_gdnative_ext_nativescript_api_struct *nativescript_api = NULL;
static int python_ready = 0; /* start() succeeded: requests may be queued */

/* ---------------------------------------------------------------- Variant -> JSON ---- */

static void json_put_godot_string(json_text *buf, const godot_string *s) {
	godot_char_string utf8 = api->godot_string_utf8(s);
	json_put_string(buf, api->godot_char_string_get_data(&utf8), (size_t)api->godot_char_string_length(&utf8));
	api->godot_char_string_destroy(&utf8);
}

static int json_put_variant(json_text *buf, const godot_variant *v, int depth);

static int json_put_array(json_text *buf, const godot_array *arr, int depth) {
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

static int json_put_dictionary(json_text *buf, const godot_dictionary *dict, int depth) {
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
static int json_put_variant(json_text *buf, const godot_variant *v, int depth) {
	if (depth > JSON_MAX_DEPTH) {
		snprintf(buf->error, sizeof(buf->error), "ValueError: value nested deeper than %d levels", JSON_MAX_DEPTH);
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

/* A malloc'd C string as a String Variant (freed here). */
static godot_variant variant_take_c_string(char *text) {
	godot_variant out;
	variant_new_c_string(&out, text);
	free(text);
	return out;
}

/* {"error": message} as JSON text in a String Variant. */
static godot_variant error_json(const char *message) {
	return variant_take_c_string(json_error_object(message));
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
	char message[JSON_ERROR_BYTES];
	if (num_args != 1 || api->godot_variant_get_type(args[0]) != GODOT_VARIANT_TYPE_DICTIONARY) {
		return error_json("LegoBridge.start takes one Dictionary (the project settings)");
	}
	json_text config = { 0 };
	if (json_put_variant(&config, args[0], 0) < 0) {
		godot_variant out = error_json(config.error);
		free(config.data);
		return out;
	}
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
	int rc = python_start(executable, config.data, message, sizeof(message));
	free(executable);
	if (rc < 0) {
		free(config.data);
		return error_json(message);
	}
	godot_variant out = variant_take_c_string(python_call_engine("start", config.data));
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
	queues_push_event(api->godot_char_string_get_data(&kind_utf8), api->godot_char_string_get_data(&name_utf8), t_ns);
	api->godot_char_string_destroy(&kind_utf8);
	api->godot_char_string_destroy(&name_utf8);
	api->godot_string_destroy(&kind);
	api->godot_string_destroy(&name);
	queues_add_engine_time(t_ns);
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
	json_text buf = { 0 };
	json_put(&buf, "[", 1);
	for (int i = 0; i < num_args; i++) {
		if (i) {
			json_put(&buf, ",", 1);
		}
		if (json_put_variant(&buf, args[i], 0) < 0) {
			godot_variant out = error_dict(buf.error);
			free(buf.data);
			queues_add_engine_time(t0);
			return out;
		}
	}
	json_put(&buf, "]", 1);
	int64_t request_id = queues_push_request(buf.data);

	godot_dictionary dict;
	api->godot_dictionary_new(&dict);
	godot_variant key, value, out;
	variant_new_c_string(&key, "request_id");
	api->godot_variant_new_int(&value, request_id);
	api->godot_dictionary_set(&dict, &key, &value);
	api->godot_variant_destroy(&key);
	api->godot_variant_destroy(&value);
	api->godot_variant_new_dictionary(&out, &dict);
	api->godot_dictionary_destroy(&dict);
	queues_add_engine_time(t0);
	return out;
}

/* poll() -> Array of Strings: the JSON results Python queued since the last poll (decisions,
 * "ready", "load_failed", "error"). Never takes the GIL. */
static godot_variant method_poll(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	UNUSED_METHOD_ARGS;
	(void)num_args;
	(void)args;
	int64_t t0 = monotonic_ns();
	text_message *results = queues_take_results();
	godot_array arr;
	api->godot_array_new(&arr);
	for (text_message *m = results; m != NULL; m = m->next) {
		godot_variant item;
		variant_new_c_string(&item, m->text);
		api->godot_array_append(&arr, &item);
		api->godot_variant_destroy(&item);
	}
	text_message_free_all(results);
	godot_variant out;
	api->godot_variant_new_array(&out, &arr);
	api->godot_array_destroy(&arr);
	queues_add_engine_time(t0);
	return out;
}

/* stats() -> String: JSON of the bridge's and the runtime's counters (takes the GIL). */
static godot_variant method_stats(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	UNUSED_METHOD_ARGS;
	(void)num_args;
	(void)args;
	return python_ready ? variant_take_c_string(python_call_engine("stats", NULL)) : error_json("the bridge is not started");
}

/* stop() -> String: stops the Python threads after they forwarded every queued event, returns
 * the final stats as JSON (takes the GIL). */
static godot_variant method_stop(godot_object *obj, void *md, void *ud, int num_args, godot_variant **args) {
	UNUSED_METHOD_ARGS;
	(void)num_args;
	(void)args;
	return python_ready ? variant_take_c_string(python_call_engine("stop", NULL)) : error_json("the bridge is not started");
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
	 * one could not be stopped, leave now with the game's exit code (see python_embed.h). */
	if (python_exit_requested()) {
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
