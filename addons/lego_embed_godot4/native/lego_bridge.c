/*
 * lego_bridge (Godot 4): the GDExtension glue of lego_embed's bridge, in C against the
 * gdextension_interface.h that build.sh dumps from the engine in use. It registers the class
 * "LegoBridge" (a RefCounted) and turns Godot 4 Variants into the JSON texts the shared C core
 * queues (native/engine_queues.c) and the embedded Python reads (native/python_embed.c).
 *
 * Threading model (the same as the Godot 3 bridge): the engine's main thread never takes the GIL
 * after start(). event() stamps CLOCK_MONOTONIC and appends to the event ring; request()
 * serialises its arguments to JSON and queues them; gpu_timestamps() queues one read-back frame
 * of RenderingDevice timestamps; poll() hands over the results Python queued. Only start(),
 * stats() and stop() take the GIL; every Python exception comes back as {"error": "Type: msg"}.
 *
 * Every method takes and returns Variants (declared as Variant to the ClassDB), so a ptrcall is
 * the same call as a Variant call and the arguments are checked here, as in Godot 3.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gdextension_interface.h>

#include "engine_queues.h"
#include "json_text.h"
#include "python_embed.h"

#define PROPERTY_USAGE_NIL_IS_VARIANT 131072 /* PropertyUsageFlags in extension_api.json */
#define EVENT_TEXT_BYTES 64

/* Opaque engine values, sized for every build (Variant is 24 bytes, 40 with double precision). */
typedef struct {
	uint64_t opaque[5];
} gd_variant;
typedef struct {
	void *opaque;
} gd_ptr; /* String, StringName, Array, Dictionary */

static struct {
	GDExtensionInterfaceVariantNewCopy variant_new_copy;
	GDExtensionInterfaceVariantNewNil variant_new_nil;
	GDExtensionInterfaceVariantDestroy variant_destroy;
	GDExtensionInterfaceVariantCall variant_call;
	GDExtensionInterfaceVariantGet variant_get;
	GDExtensionInterfaceVariantSet variant_set;
	GDExtensionInterfaceVariantGetIndexed variant_get_indexed;
	GDExtensionInterfaceVariantGetType variant_get_type;
	GDExtensionInterfaceVariantStringify variant_stringify;
	GDExtensionInterfaceVariantGetPtrConstructor variant_get_ptr_constructor;
	GDExtensionInterfaceVariantGetPtrDestructor variant_get_ptr_destructor;
	GDExtensionInterfaceGetVariantFromTypeConstructor get_variant_from_type_constructor;
	GDExtensionInterfaceGetVariantToTypeConstructor get_variant_to_type_constructor;
	GDExtensionInterfaceStringNewWithUtf8Chars string_new_with_utf8_chars;
	GDExtensionInterfaceStringToUtf8Chars string_to_utf8_chars;
	GDExtensionInterfaceStringNameNewWithUtf8Chars string_name_new_with_utf8_chars;
	GDExtensionInterfaceClassdbConstructObject2 classdb_construct_object2;
	GDExtensionInterfaceObjectSetInstance object_set_instance;
	GDExtensionInterfaceClassdbRegisterExtensionClass4 classdb_register_extension_class;
	GDExtensionInterfaceClassdbRegisterExtensionClassMethod classdb_register_extension_class_method;
	GDExtensionInterfaceClassdbUnregisterExtensionClass classdb_unregister_extension_class;
} gd;

static GDExtensionClassLibraryPtr library = NULL;
static GDExtensionTypeFromVariantConstructorFunc to_bool, to_int, to_float, to_string;
static GDExtensionVariantFromTypeConstructorFunc from_int, from_string, from_array, from_dictionary;
static GDExtensionPtrDestructor destroy_string, destroy_string_name, destroy_array, destroy_dictionary;
static GDExtensionPtrConstructor new_array, new_dictionary;
static gd_ptr class_name, parent_class_name;
static int python_ready = 0; /* start() succeeded: requests may be queued */

/* ------------------------------------------------------------------ engine values ---- */

static gd_ptr string_name(const char *text) {
	gd_ptr out;
	gd.string_name_new_with_utf8_chars(&out, text);
	return out;
}

static void variant_new_c_string(gd_variant *out, const char *text) {
	gd_ptr s;
	gd.string_new_with_utf8_chars(&s, text);
	from_string(out, &s);
	destroy_string(&s);
}

/* A malloc'd UTF-8 copy of a String. */
static char *string_to_c(const gd_ptr *s) {
	GDExtensionInt length = gd.string_to_utf8_chars(s, NULL, 0);
	char *text = malloc((size_t)length + 1);
	gd.string_to_utf8_chars(s, text, length);
	text[length] = '\0';
	return text;
}

/* str(v) as a malloc'd UTF-8 string (any Variant type). */
static char *variant_to_c_string(const gd_variant *v) {
	gd_ptr s;
	gd.variant_stringify(v, &s);
	char *text = string_to_c(&s);
	destroy_string(&s);
	return text;
}

/* v.method() with no arguments; returns 0 when the call worked. */
static int variant_call0(gd_variant *v, const char *method, gd_variant *result) {
	gd_ptr name = string_name(method);
	GDExtensionCallError error = { GDEXTENSION_CALL_OK, 0, 0 };
	gd.variant_call(v, &name, NULL, 0, result, &error);
	destroy_string_name(&name);
	return error.error == GDEXTENSION_CALL_OK ? 0 : -1;
}

static int64_t variant_size(gd_variant *v) {
	gd_variant size;
	int64_t n = 0;
	if (variant_call0(v, "size", &size) == 0) {
		to_int(&n, &size);
		gd.variant_destroy(&size);
	}
	return n;
}

static void variant_take_c_string(gd_variant *out, char *text) {
	variant_new_c_string(out, text);
	free(text);
}

/* {"error": message} or {"request_id": n} as a Dictionary Variant. */
static void dictionary_with(gd_variant *out, const char *key, const gd_variant *value) {
	gd_ptr dict;
	new_dictionary(&dict, NULL);
	from_dictionary(out, &dict);
	destroy_dictionary(&dict);
	gd_variant key_variant;
	GDExtensionBool valid = 0;
	variant_new_c_string(&key_variant, key);
	gd.variant_set(out, &key_variant, value, &valid);
	gd.variant_destroy(&key_variant);
}

static void error_dictionary(gd_variant *out, const char *message) {
	gd_variant text;
	variant_new_c_string(&text, message);
	dictionary_with(out, "error", &text);
	gd.variant_destroy(&text);
}

static void error_json(gd_variant *out, const char *message) {
	variant_take_c_string(out, json_error_object(message));
}

/* ---------------------------------------------------------------- Variant -> JSON ---- */

static int json_put_variant(json_text *buf, gd_variant *v, int depth);

static void json_put_c_string(json_text *buf, char *text) {
	json_put_string(buf, text, strlen(text));
	free(text);
}

/* Arrays and packed arrays, element by element. */
static int json_put_sequence(json_text *buf, gd_variant *v, int depth) {
	int64_t n = variant_size(v);
	json_put(buf, "[", 1);
	for (int64_t i = 0; i < n; i++) {
		gd_variant item;
		GDExtensionBool valid = 0, out_of_bounds = 0;
		gd.variant_get_indexed(v, i, &item, &valid, &out_of_bounds);
		if (i) {
			json_put(buf, ",", 1);
		}
		int rc = valid ? json_put_variant(buf, &item, depth + 1) : -1;
		gd.variant_destroy(&item);
		if (rc < 0) {
			if (!buf->error[0]) {
				snprintf(buf->error, sizeof(buf->error), "ValueError: array element %lld is unreadable", (long long)i);
			}
			return -1;
		}
	}
	json_put(buf, "]", 1);
	return 0;
}

static int json_put_dictionary(json_text *buf, gd_variant *dict, int depth) {
	gd_variant keys;
	if (variant_call0(dict, "keys", &keys) < 0) {
		snprintf(buf->error, sizeof(buf->error), "ValueError: the Dictionary's keys are unreadable");
		return -1;
	}
	int64_t n = variant_size(&keys);
	int rc = 0;
	json_put(buf, "{", 1);
	for (int64_t i = 0; i < n && rc == 0; i++) {
		gd_variant key, value;
		GDExtensionBool valid = 0, out_of_bounds = 0;
		gd.variant_get_indexed(&keys, i, &key, &valid, &out_of_bounds);
		GDExtensionVariantType type = gd.variant_get_type(&key);
		if (type != GDEXTENSION_VARIANT_TYPE_STRING && type != GDEXTENSION_VARIANT_TYPE_STRING_NAME) {
			snprintf(buf->error, sizeof(buf->error),
					"TypeError: Dictionary keys must be Strings (got a key of Variant type %d)", (int)type);
			rc = -1;
		} else {
			if (i) {
				json_put(buf, ",", 1);
			}
			json_put_c_string(buf, variant_to_c_string(&key));
			json_put(buf, ":", 1);
			gd.variant_get(dict, &key, &value, &valid);
			rc = json_put_variant(buf, &value, depth + 1);
			gd.variant_destroy(&value);
		}
		gd.variant_destroy(&key);
	}
	gd.variant_destroy(&keys);
	if (rc == 0) {
		json_put(buf, "}", 1);
	}
	return rc;
}

/* Vector2/2i/3/3i as a JSON array of their components. */
static void json_put_vector(json_text *buf, gd_variant *v, int components) {
	json_put(buf, "[", 1);
	for (int i = 0; i < components; i++) {
		gd_variant component;
		GDExtensionBool valid = 0, out_of_bounds = 0;
		double value = 0.0;
		gd.variant_get_indexed(v, i, &component, &valid, &out_of_bounds);
		if (gd.variant_get_type(&component) == GDEXTENSION_VARIANT_TYPE_INT) {
			int64_t integer = 0;
			to_int(&integer, &component);
			value = (double)integer;
		} else {
			to_float(&value, &component);
		}
		gd.variant_destroy(&component);
		if (i) {
			json_put(buf, ",", 1);
		}
		json_put_number(buf, value);
	}
	json_put(buf, "]", 1);
}

/* Appends v as JSON; returns -1 with buf->error set for values JSON cannot carry. */
static int json_put_variant(json_text *buf, gd_variant *v, int depth) {
	if (depth > JSON_MAX_DEPTH) {
		snprintf(buf->error, sizeof(buf->error), "ValueError: value nested deeper than %d levels", JSON_MAX_DEPTH);
		return -1;
	}
	GDExtensionVariantType type = gd.variant_get_type(v);
	switch (type) {
		case GDEXTENSION_VARIANT_TYPE_NIL:
			json_puts(buf, "null");
			return 0;
		case GDEXTENSION_VARIANT_TYPE_BOOL: {
			GDExtensionBool value = 0;
			to_bool(&value, v);
			json_puts(buf, value ? "true" : "false");
			return 0;
		}
		case GDEXTENSION_VARIANT_TYPE_INT: {
			int64_t value = 0;
			to_int(&value, v);
			json_put_int(buf, value);
			return 0;
		}
		case GDEXTENSION_VARIANT_TYPE_FLOAT: {
			double value = 0.0;
			to_float(&value, v);
			json_put_number(buf, value);
			return 0;
		}
		case GDEXTENSION_VARIANT_TYPE_STRING:
		case GDEXTENSION_VARIANT_TYPE_STRING_NAME:
			json_put_c_string(buf, variant_to_c_string(v));
			return 0;
		case GDEXTENSION_VARIANT_TYPE_VECTOR2:
		case GDEXTENSION_VARIANT_TYPE_VECTOR2I:
			json_put_vector(buf, v, 2);
			return 0;
		case GDEXTENSION_VARIANT_TYPE_VECTOR3:
		case GDEXTENSION_VARIANT_TYPE_VECTOR3I:
			json_put_vector(buf, v, 3);
			return 0;
		case GDEXTENSION_VARIANT_TYPE_DICTIONARY:
			return json_put_dictionary(buf, v, depth);
		case GDEXTENSION_VARIANT_TYPE_ARRAY:
		case GDEXTENSION_VARIANT_TYPE_PACKED_INT32_ARRAY:
		case GDEXTENSION_VARIANT_TYPE_PACKED_INT64_ARRAY:
		case GDEXTENSION_VARIANT_TYPE_PACKED_FLOAT32_ARRAY:
		case GDEXTENSION_VARIANT_TYPE_PACKED_FLOAT64_ARRAY:
		case GDEXTENSION_VARIANT_TYPE_PACKED_STRING_ARRAY:
			return json_put_sequence(buf, v, depth);
		default: {
			char *text = variant_to_c_string(v);
			snprintf(buf->error, sizeof(buf->error),
					"TypeError: Godot value '%s' (Variant type %d) cannot be passed to Python; use "
					"bool, int, float, String, Vector2/3, Array or Dictionary",
					text, (int)type);
			free(text);
			return -1;
		}
	}
}

/* ------------------------------------------------------------------ LegoBridge methods ---- */

typedef void (*bridge_method)(gd_variant **args, int64_t count, gd_variant *result);

/* The argument as a malloc'd UTF-8 string (empty when it is not a String). */
static char *string_argument(gd_variant *v) {
	GDExtensionVariantType type = gd.variant_get_type(v);
	if (type != GDEXTENSION_VARIANT_TYPE_STRING && type != GDEXTENSION_VARIANT_TYPE_STRING_NAME) {
		return strdup("");
	}
	return variant_to_c_string(v);
}

/* start(config: Dictionary) -> String: JSON {"ok": true, ...} or {"error": message}. The model
 * loads on a Python thread afterwards; poll() reports {"kind": "ready"} or "load_failed". */
static void method_start(gd_variant **args, int64_t count, gd_variant *result) {
	char message[JSON_ERROR_BYTES];
	if (count != 1 || gd.variant_get_type(args[0]) != GDEXTENSION_VARIANT_TYPE_DICTIONARY) {
		error_json(result, "LegoBridge.start takes one Dictionary (the project settings)");
		return;
	}
	json_text config = { 0 };
	if (json_put_variant(&config, args[0], 0) < 0) {
		error_json(result, config.error);
		free(config.data);
		return;
	}
	gd_variant key, value;
	GDExtensionBool valid = 0;
	variant_new_c_string(&key, "python_executable");
	gd.variant_get(args[0], &key, &value, &valid);
	char *executable = valid ? string_argument(&value) : strdup("");
	if (valid) {
		gd.variant_destroy(&value);
	}
	gd.variant_destroy(&key);
	int rc = python_start(executable, config.data, message, sizeof(message));
	free(executable);
	if (rc < 0) {
		error_json(result, message);
	} else {
		variant_take_c_string(result, python_call_engine("start", config.data));
		python_ready = 1;
	}
	free(config.data);
}

/* Copies a String argument's UTF-8 into a fixed buffer (truncated), without allocating. */
static void string_argument_into(gd_variant *v, char *out, size_t size) {
	out[0] = '\0';
	GDExtensionVariantType type = gd.variant_get_type(v);
	if (type != GDEXTENSION_VARIANT_TYPE_STRING) {
		return;
	}
	gd_ptr s;
	to_string(&s, v);
	GDExtensionInt n = gd.string_to_utf8_chars(&s, out, (GDExtensionInt)size - 1);
	out[n < (GDExtensionInt)size ? n : (GDExtensionInt)size - 1] = '\0';
	destroy_string(&s);
}

/* event(kind: String, name: String) -> null. Never takes the GIL. */
static void method_event(gd_variant **args, int64_t count, gd_variant *result) {
	int64_t t_ns = monotonic_ns();
	(void)result;
	if (count != 2) {
		return;
	}
	char kind[EVENT_TEXT_BYTES], name[EVENT_TEXT_BYTES];
	string_argument_into(args[0], kind, sizeof(kind));
	string_argument_into(args[1], name, sizeof(name));
	queues_push_event(kind, name, t_ns);
	queues_add_engine_time(t_ns);
}

/* request(npc_id: String, state: Dictionary, actions: Array, deadline_ms: float
 *         [, options: Dictionary]) -> Dictionary:
 * {"request_id": n} (the answer comes through poll()) or {"error": message} when the arguments
 * cannot be serialised. options: {"fallback": String, "supersede": bool} (checked in Python);
 * registered with an empty Dictionary as its default, and left out of the JSON when not given.
 * Never takes the GIL: validation and inference run on Python threads. */
static void method_request(gd_variant **args, int64_t count, gd_variant *result) {
	int64_t t0 = monotonic_ns();
	if (!python_ready) {
		error_dictionary(result, "LegoBridge.request before a successful start()");
		return;
	}
	if (count != 4 && count != 5) {
		error_dictionary(result, "LegoBridge.request takes (npc_id, state, actions, deadline_ms[, options])");
		return;
	}
	json_text buf = { 0 };
	json_put(&buf, "[", 1);
	for (int i = 0; i < count; i++) {
		if (i) {
			json_put(&buf, ",", 1);
		}
		if (json_put_variant(&buf, args[i], 0) < 0) {
			error_dictionary(result, buf.error);
			free(buf.data);
			queues_add_engine_time(t0);
			return;
		}
	}
	json_put(&buf, "]", 1);
	int64_t request_id = queues_push_request(buf.data);
	gd_variant id;
	from_int(&id, &request_id);
	dictionary_with(result, "request_id", &id);
	gd.variant_destroy(&id);
	queues_add_engine_time(t0);
}

/* gpu_timestamps(frame: Dictionary) -> null: one frame of RenderingDevice timestamps read back
 * by LegoRuntime ({"frame", "drawn", "names", "gpu_ns", "cpu_us", "ticks_us"}); queued as JSON
 * with "t_ns", CLOCK_MONOTONIC now, for the clock mapping (lego_embed.engines.gpu_timestamps). */
static void method_gpu_timestamps(gd_variant **args, int64_t count, gd_variant *result) {
	int64_t t_ns = monotonic_ns();
	(void)result;
	if (!python_ready || count != 1 || gd.variant_get_type(args[0]) != GDEXTENSION_VARIANT_TYPE_DICTIONARY) {
		return;
	}
	json_text buf = { 0 };
	if (json_put_variant(&buf, args[0], 0) < 0 || buf.length < 2) {
		free(buf.data);
		return;
	}
	buf.length--; /* drop the closing brace, append the stamp */
	json_puts(&buf, buf.length > 1 ? ",\"t_ns\":" : "\"t_ns\":");
	json_put_int(&buf, t_ns);
	json_puts(&buf, "}");
	queues_push_gpu_frame(buf.data);
	queues_add_engine_time(t_ns);
}

/* poll() -> Array of Strings: the JSON results Python queued since the last poll (decisions,
 * "ready", "load_failed", "error"). Never takes the GIL. */
static void method_poll(gd_variant **args, int64_t count, gd_variant *result) {
	int64_t t0 = monotonic_ns();
	(void)args;
	(void)count;
	gd_ptr array;
	new_array(&array, NULL);
	from_array(result, &array);
	destroy_array(&array);
	text_message *results = queues_take_results();
	gd_ptr append = string_name("append");
	for (text_message *m = results; m != NULL; m = m->next) {
		gd_variant item, ignored;
		GDExtensionCallError error = { GDEXTENSION_CALL_OK, 0, 0 };
		const GDExtensionConstVariantPtr call_args[1] = { &item };
		variant_new_c_string(&item, m->text);
		gd.variant_call(result, &append, call_args, 1, &ignored, &error);
		gd.variant_destroy(&ignored);
		gd.variant_destroy(&item);
	}
	destroy_string_name(&append);
	text_message_free_all(results);
	queues_add_engine_time(t0);
}

/* stats() -> String: JSON of the bridge's and the runtime's counters (takes the GIL). */
static void method_stats(gd_variant **args, int64_t count, gd_variant *result) {
	(void)args;
	(void)count;
	if (python_ready) {
		variant_take_c_string(result, python_call_engine("stats", NULL));
	} else {
		error_json(result, "the bridge is not started");
	}
}

/* stop() -> String: stops the Python threads after they forwarded every queued event, returns
 * the final stats as JSON (takes the GIL). */
static void method_stop(gd_variant **args, int64_t count, gd_variant *result) {
	(void)args;
	(void)count;
	if (python_ready) {
		variant_take_c_string(result, python_call_engine("stop", NULL));
	} else {
		error_json(result, "the bridge is not started");
	}
}

/* --------------------------------------------------------------- ClassDB plumbing ---- */

#define MAX_ARGUMENTS 5

typedef struct {
	const char *name;
	bridge_method function;
	uint32_t argument_count;
	const char *argument_names[MAX_ARGUMENTS];
	uint32_t default_argument_count; /* trailing arguments that may be left out (default {}) */
} method_spec;

static const method_spec METHODS[] = {
	{ "start", method_start, 1, { "config" }, 0 },
	{ "event", method_event, 2, { "kind", "name" }, 0 },
	{ "request", method_request, 5, { "npc_id", "state", "actions", "deadline_ms", "options" }, 1 },
	{ "gpu_timestamps", method_gpu_timestamps, 1, { "frame" }, 0 },
	{ "poll", method_poll, 0, { NULL }, 0 },
	{ "stats", method_stats, 0, { NULL }, 0 },
	{ "stop", method_stop, 0, { NULL }, 0 },
};
#define METHOD_COUNT (sizeof(METHODS) / sizeof(METHODS[0]))

static void method_call(void *method_userdata, GDExtensionClassInstancePtr instance,
		const GDExtensionConstVariantPtr *args, GDExtensionInt count, GDExtensionVariantPtr r_return,
		GDExtensionCallError *r_error) {
	(void)instance;
	gd_variant result;
	gd.variant_new_nil(&result);
	((const method_spec *)method_userdata)->function((gd_variant **)args, count, &result);
	gd.variant_destroy(r_return);
	gd.variant_new_copy(r_return, &result);
	gd.variant_destroy(&result);
	r_error->error = GDEXTENSION_CALL_OK;
}

/* Arguments and return value are declared Variant: a ptrcall passes Variant pointers too. */
static void method_ptrcall(void *method_userdata, GDExtensionClassInstancePtr instance,
		const GDExtensionConstTypePtr *args, GDExtensionTypePtr r_ret) {
	GDExtensionCallError error;
	method_call(method_userdata, instance, (const GDExtensionConstVariantPtr *)args,
			((const method_spec *)method_userdata)->argument_count, r_ret, &error);
}

static GDExtensionObjectPtr create_instance(void *class_userdata, GDExtensionBool notify_postinitialize) {
	(void)class_userdata;
	(void)notify_postinitialize;
	GDExtensionObjectPtr object = gd.classdb_construct_object2(&parent_class_name);
	gd.object_set_instance(object, &class_name, (GDExtensionClassInstancePtr)&python_ready);
	return object;
}

static void free_instance(void *class_userdata, GDExtensionClassInstancePtr instance) {
	(void)class_userdata;
	(void)instance; /* the bridge's state is per process, not per instance */
}

static GDExtensionClassCallVirtual get_virtual(void *class_userdata, GDExtensionConstStringNamePtr name, uint32_t hash) {
	(void)class_userdata;
	(void)name;
	(void)hash;
	return NULL;
}

static GDExtensionPropertyInfo variant_property(gd_ptr *name, gd_ptr *empty_name, gd_ptr *empty_string) {
	GDExtensionPropertyInfo info = { GDEXTENSION_VARIANT_TYPE_NIL, name, empty_name, 0, empty_string,
		PROPERTY_USAGE_NIL_IS_VARIANT };
	return info;
}

static void register_methods(void) {
	gd_ptr empty_name = string_name(""), empty_string;
	gd.string_new_with_utf8_chars(&empty_string, "");
	for (size_t m = 0; m < METHOD_COUNT; m++) {
		const method_spec *spec = &METHODS[m];
		gd_ptr method_name = string_name(spec->name);
		gd_ptr argument_names[MAX_ARGUMENTS];
		GDExtensionPropertyInfo arguments[MAX_ARGUMENTS];
		GDExtensionClassMethodArgumentMetadata metadata[MAX_ARGUMENTS] = { 0 };
		gd_variant defaults[MAX_ARGUMENTS];
		GDExtensionVariantPtr default_pointers[MAX_ARGUMENTS];
		for (uint32_t a = 0; a < spec->argument_count; a++) {
			argument_names[a] = string_name(spec->argument_names[a]);
			arguments[a] = variant_property(&argument_names[a], &empty_name, &empty_string);
		}
		for (uint32_t d = 0; d < spec->default_argument_count; d++) {
			gd_ptr empty_dictionary;
			new_dictionary(&empty_dictionary, NULL);
			from_dictionary(&defaults[d], &empty_dictionary);
			destroy_dictionary(&empty_dictionary);
			default_pointers[d] = &defaults[d];
		}
		GDExtensionPropertyInfo return_info = variant_property(&empty_name, &empty_name, &empty_string);
		GDExtensionClassMethodInfo info = {
			.name = &method_name,
			.method_userdata = (void *)spec,
			.call_func = method_call,
			.ptrcall_func = method_ptrcall,
			.method_flags = GDEXTENSION_METHOD_FLAGS_DEFAULT,
			.has_return_value = 1,
			.return_value_info = &return_info,
			.return_value_metadata = GDEXTENSION_METHOD_ARGUMENT_METADATA_NONE,
			.argument_count = spec->argument_count,
			.arguments_info = arguments,
			.arguments_metadata = metadata,
			.default_argument_count = spec->default_argument_count,
			.default_arguments = spec->default_argument_count ? default_pointers : NULL,
		};
		gd.classdb_register_extension_class_method(library, &class_name, &info);
		for (uint32_t d = 0; d < spec->default_argument_count; d++) {
			gd.variant_destroy(&defaults[d]); /* the engine keeps copies */
		}
		for (uint32_t a = 0; a < spec->argument_count; a++) {
			destroy_string_name(&argument_names[a]);
		}
		destroy_string_name(&method_name);
	}
	destroy_string_name(&empty_name);
	destroy_string(&empty_string);
}

static void initialize(void *userdata, GDExtensionInitializationLevel level) {
	(void)userdata;
	if (level != GDEXTENSION_INITIALIZATION_SCENE) {
		return;
	}
	to_bool = gd.get_variant_to_type_constructor(GDEXTENSION_VARIANT_TYPE_BOOL);
	to_int = gd.get_variant_to_type_constructor(GDEXTENSION_VARIANT_TYPE_INT);
	to_float = gd.get_variant_to_type_constructor(GDEXTENSION_VARIANT_TYPE_FLOAT);
	to_string = gd.get_variant_to_type_constructor(GDEXTENSION_VARIANT_TYPE_STRING);
	from_int = gd.get_variant_from_type_constructor(GDEXTENSION_VARIANT_TYPE_INT);
	from_string = gd.get_variant_from_type_constructor(GDEXTENSION_VARIANT_TYPE_STRING);
	from_array = gd.get_variant_from_type_constructor(GDEXTENSION_VARIANT_TYPE_ARRAY);
	from_dictionary = gd.get_variant_from_type_constructor(GDEXTENSION_VARIANT_TYPE_DICTIONARY);
	destroy_string = gd.variant_get_ptr_destructor(GDEXTENSION_VARIANT_TYPE_STRING);
	destroy_string_name = gd.variant_get_ptr_destructor(GDEXTENSION_VARIANT_TYPE_STRING_NAME);
	destroy_array = gd.variant_get_ptr_destructor(GDEXTENSION_VARIANT_TYPE_ARRAY);
	destroy_dictionary = gd.variant_get_ptr_destructor(GDEXTENSION_VARIANT_TYPE_DICTIONARY);
	new_array = gd.variant_get_ptr_constructor(GDEXTENSION_VARIANT_TYPE_ARRAY, 0);
	new_dictionary = gd.variant_get_ptr_constructor(GDEXTENSION_VARIANT_TYPE_DICTIONARY, 0);
	class_name = string_name("LegoBridge");
	parent_class_name = string_name("RefCounted");

	gd_ptr icon_path;
	gd.string_new_with_utf8_chars(&icon_path, "");
	GDExtensionClassCreationInfo4 info = {
		.is_virtual = 0,
		.is_abstract = 0,
		.is_exposed = 1,
		.is_runtime = 0,
		.icon_path = &icon_path,
		.create_instance_func = create_instance,
		.free_instance_func = free_instance,
		.get_virtual_func = get_virtual,
	};
	gd.classdb_register_extension_class(library, &class_name, &parent_class_name, &info);
	destroy_string(&icon_path);
	register_methods();
}

/* When Python could not stop one of its threads (the model is still loading), end the process
 * with the game's exit status before the C++ static destructors registered earlier (torch's)
 * run under that thread's feet. on_exit() handlers receive exit()'s status. */
static void exit_at_once(int status, void *arg) {
	(void)arg;
	fflush(stdout);
	fflush(stderr);
	_exit(status);
}

static void deinitialize(void *userdata, GDExtensionInitializationLevel level) {
	(void)userdata;
	if (level != GDEXTENSION_INITIALIZATION_SCENE) {
		return;
	}
	gd.classdb_unregister_extension_class(library, &class_name);
	destroy_string_name(&class_name);
	destroy_string_name(&parent_class_name);
	/* Python is deliberately not finalised (finalising with torch's threads alive can hang the
	 * exit); stop() ended our own threads. The library is linked -z nodelete, so this handler
	 * stays mapped after Godot closes it. */
	if (python_exit_requested()) {
		on_exit(exit_at_once, NULL);
	}
}

#define LOAD(field, symbol) (gd.field = (void *)get_proc_address(symbol)) == NULL

/* The entry point named in lego_bridge.gdextension. */
__attribute__((visibility("default"))) GDExtensionBool lego_bridge_init(GDExtensionInterfaceGetProcAddress get_proc_address,
		GDExtensionClassLibraryPtr p_library, GDExtensionInitialization *r_initialization) {
	library = p_library;
	gd.classdb_register_extension_class = (void *)get_proc_address("classdb_register_extension_class5");
	if (gd.classdb_register_extension_class == NULL) { /* 4.4: the same struct, version 4 */
		gd.classdb_register_extension_class = (void *)get_proc_address("classdb_register_extension_class4");
	}
	if (gd.classdb_register_extension_class == NULL || LOAD(variant_new_copy, "variant_new_copy") ||
			LOAD(variant_new_nil, "variant_new_nil") || LOAD(variant_destroy, "variant_destroy") ||
			LOAD(variant_call, "variant_call") || LOAD(variant_get, "variant_get") ||
			LOAD(variant_set, "variant_set") || LOAD(variant_get_indexed, "variant_get_indexed") ||
			LOAD(variant_get_type, "variant_get_type") || LOAD(variant_stringify, "variant_stringify") ||
			LOAD(variant_get_ptr_constructor, "variant_get_ptr_constructor") ||
			LOAD(variant_get_ptr_destructor, "variant_get_ptr_destructor") ||
			LOAD(get_variant_from_type_constructor, "get_variant_from_type_constructor") ||
			LOAD(get_variant_to_type_constructor, "get_variant_to_type_constructor") ||
			LOAD(string_new_with_utf8_chars, "string_new_with_utf8_chars") ||
			LOAD(string_to_utf8_chars, "string_to_utf8_chars") ||
			LOAD(string_name_new_with_utf8_chars, "string_name_new_with_utf8_chars") ||
			LOAD(classdb_construct_object2, "classdb_construct_object2") ||
			LOAD(object_set_instance, "object_set_instance") ||
			LOAD(classdb_register_extension_class_method, "classdb_register_extension_class_method") ||
			LOAD(classdb_unregister_extension_class, "classdb_unregister_extension_class")) {
		fprintf(stderr, "lego_bridge: this Godot lacks a GDExtension function the bridge needs (Godot 4.4 or newer is required)\n");
		return 0;
	}
	r_initialization->minimum_initialization_level = GDEXTENSION_INITIALIZATION_SCENE;
	r_initialization->userdata = NULL;
	r_initialization->initialize = initialize;
	r_initialization->deinitialize = deinitialize;
	return 1;
}
