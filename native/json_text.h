/*
 * json_text: a growable UTF-8 buffer for writing JSON, the only currency between the engine
 * glue (which walks the engine's Variants) and Python. Shared by the Godot 3 and Godot 4 bridges.
 */
#ifndef LEGO_JSON_TEXT_H
#define LEGO_JSON_TEXT_H

#include <stddef.h>
#include <stdint.h>

#define JSON_ERROR_BYTES 2048
#define JSON_MAX_DEPTH 32

typedef struct {
	char *data; /* malloc'd, NUL-terminated; NULL while empty */
	size_t length;
	size_t capacity;
	char error[JSON_ERROR_BYTES]; /* set by the engine glue when a value cannot be written */
} json_text;

void json_put(json_text *buf, const char *text, size_t n);
void json_puts(json_text *buf, const char *text);
/* A JSON string literal of text[0..n) (quotes, backslashes and control characters escaped). */
void json_put_string(json_text *buf, const char *text, size_t n);
/* A number; NaN and infinities as Python's json reads them (validation rejects them later). */
void json_put_number(json_text *buf, double value);
void json_put_int(json_text *buf, int64_t value);
/* {"error": message} as a malloc'd JSON text. */
char *json_error_object(const char *message);

#endif
