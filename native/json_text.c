#include "json_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void json_put(json_text *buf, const char *text, size_t n) {
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

void json_puts(json_text *buf, const char *text) {
	json_put(buf, text, strlen(text));
}

void json_put_string(json_text *buf, const char *text, size_t n) {
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

void json_put_number(json_text *buf, double value) {
	char number[40];
	if (isnan(value)) {
		json_puts(buf, "NaN");
	} else if (isinf(value)) {
		json_puts(buf, value > 0 ? "Infinity" : "-Infinity");
	} else {
		snprintf(number, sizeof(number), "%.17g", value);
		json_puts(buf, number);
	}
}

void json_put_int(json_text *buf, int64_t value) {
	char number[32];
	snprintf(number, sizeof(number), "%lld", (long long)value);
	json_puts(buf, number);
}

char *json_error_object(const char *message) {
	json_text buf = { 0 };
	json_puts(&buf, "{\"error\":");
	json_put_string(&buf, message, strlen(message));
	json_puts(&buf, "}");
	return buf.data;
}
