/* hostcalls.c: a Proxy-Wasm test filter (ABI 0.2.1) for pier's filter tests.
 *
 * Modelled on Kong ngx_wasm_module's `hostcalls` test filter: every request whose path starts
 * with /t/ names a command, and the filter runs that command against the host (hostcalls,
 * local responses, HTTP calls, shared data, queues, metrics, bodies, traps...). Any other path,
 * and any unknown /t/ path, passes through untouched. For every request the filter adds the
 * response header `x-hostcalls: 1`, so a test can see that it ran.
 *
 * Build (a WASI reactor: no main, its VM lives across requests):
 *   clang --target=wasm32-wasi --sysroot=/usr -O2 -Wall -Wextra -mexec-model=reactor \
 *     -Wl,--strip-debug -Wl,--export=malloc -Wl,--export=free \
 *     -o guests/prebuilt/filter-hostcalls.wasm guests/proxywasm/hostcalls.c
 *
 * Configuration (plugin configuration, buffer 7):
 *   (empty)          nothing special
 *   tick=MS          tick every MS milliseconds; each tick increments shared data "hostcalls.ticks"
 *   label=TEXT       this plugin's label, for /t/plugin (each root context keeps its own)
 *   fail-configure   proxy_on_configure fails (start-up must fail)
 *
 * Commands (the request's :path, without its query string, unless noted):
 *   /t/echo/header/NAME                  200 the header's value, 404 "not found"
 *   /t/echo/headers                      200 "name: value\n" for every request header pair
 *   /t/log/property/DOTTED.PATH          logs and answers a property, 404 "not found"
 *   /t/log/on_log                        proxy_on_log logs "on_log response.code=CODE"
 *   /t/send_local_response/CODE          CODE "local CODE" with header x-local: 1
 *   /t/set_request_header/NAME/VALUE     replaces a request header, continues
 *   /t/add_request_header/NAME/VALUE     adds a request header, continues
 *   /t/remove_request_header/NAME        removes a request header, continues
 *   /t/set_request_headers               replaces the whole map (pseudo-headers kept), continues
 *   /t/add_response_header/NAME/VALUE    adds a response header
 *   /t/set_status/CODE                   replaces the response's :status
 *   /t/shared_data/set/KEY/VALUE[/CAS]   "status=N"
 *   /t/shared_data/get/KEY               "VALUE cas=CAS" or "status=N"
 *   /t/ticks                             the tick count ("0" before the first tick)
 *   /t/queue/register/NAME               "id=ID" or "status=N"
 *   /t/queue/enqueue/NAME/VALUE          "status=N"; the registering VM logs and records it
 *   /t/queue/seen                        the values proxy_on_queue_ready saw, joined by ","
 *   /t/queue/dequeue/NAME                "value=V" or "status=N"
 *   /t/metrics/counter/NAME/DELTA        "value=V" or "status=N"
 *   /t/metrics/gauge/NAME/VALUE          "value=V" or "status=N"
 *   /t/metrics/histogram/NAME/VALUE      "status=N"
 *   /t/property/set/NAME/VALUE           "value=V" or "status=N"
 *   /t/time, /t/log_level, /t/random     "ok"/"zero", "level=N", "ok"/"zero"
 *   /t/env/NAME                          200 the environment variable's value, 404 "not set"
 *   /t/plugin                            adds request header x-plugin-ROOT_ID (x-plugin- when the
 *                                        root id is empty): "name=N;vm=V;label=L;streams=S", S the
 *                                        stream contexts this VM has created; continues
 *   /t/stdout/TEXT                       prints to stdout and stderr, continues
 *   /t/http_call/UPSTREAM/REST           200 "call status=S body=B" (REST keeps the query)
 *   /t/http_call_continue/UPSTREAM/REST  adds x-call-status: S to the request and continues
 *   /t/body/request/upper                uppercases the whole request body
 *   /t/body/request/size                 logs "request body size N"
 *   /t/body/request/call                 holds the request body until an HTTP call to backend
 *                                        answers, then prefixes it with "<answer>|"
 *   /t/body/response/prefix              prefixes the whole response body with "filtered:"
 *   /t/trailers                          logs trailer counts, adds trailer x-filter-trailer: 1
 *   /t/memory/grow_page                  grows memory by one page: "pages=N" or "grow failed"
 *   /t/close, /t/pause/forever, /t/loop, /t/memory/grow, /t/done, /t/status, /t/foreign, /t/grpc
 *   /t/bad/...                           hostcalls with bad arguments: "status=N"
 *   /t/trap/WHERE                        traps in that callback
 *   /t/loop/WHERE                        spins forever in that callback (request_headers,
 *                                        request_body, response_headers, response_body,
 *                                        http_call_response, log)
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* ------------------------------------------------------------------------------------------ */
/* The ABI: constants                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* Hostcall statuses. */
enum {
    OK = 0,
    NOT_FOUND = 1,
    BAD_ARGUMENT = 2,
    SERIALIZATION_FAILURE = 3,
    PARSE_FAILURE = 4,
    INVALID_MEMORY_ACCESS = 6,
    EMPTY = 7,
    CAS_MISMATCH = 8,
    INTERNAL_FAILURE = 10,
    UNIMPLEMENTED = 12,
};

/* What a stream callback asks the host to do next. */
enum { CONTINUE = 0, PAUSE = 1 };

/* proxy_log levels. */
enum { LOG_TRACE = 0, LOG_DEBUG = 1, LOG_INFO = 2, LOG_WARN = 3, LOG_ERROR = 4 };

/* Header maps. */
enum {
    MAP_REQUEST_HEADERS = 0,
    MAP_REQUEST_TRAILERS = 1,
    MAP_RESPONSE_HEADERS = 2,
    MAP_RESPONSE_TRAILERS = 3,
    MAP_CALL_RESPONSE_HEADERS = 6,
    MAP_CALL_RESPONSE_TRAILERS = 7,
};

/* Buffers. */
enum {
    BUFFER_REQUEST_BODY = 0,
    BUFFER_RESPONSE_BODY = 1,
    BUFFER_CALL_RESPONSE_BODY = 4,
    BUFFER_VM_CONFIG = 6,
    BUFFER_PLUGIN_CONFIG = 7,
};

/* Stream types (proxy_continue_stream, proxy_close_stream). */
enum { STREAM_REQUEST = 0, STREAM_RESPONSE = 1 };

/* Metric types. */
enum { METRIC_COUNTER = 0, METRIC_GAUGE = 1, METRIC_HISTOGRAM = 2 };

/* ------------------------------------------------------------------------------------------ */
/* The ABI: what the host provides (module "env"). Every pointer is an i32 in wasm32.         */
/* Data the host returns through `char **` / `size_t *` out-slots was allocated with our      */
/* exported malloc and must be freed (a zero-length value comes back as NULL, 0).             */
/* ------------------------------------------------------------------------------------------ */

#define HOSTCALL(name) __attribute__((import_module("env"), import_name(#name)))

HOSTCALL(proxy_log)
int32_t proxy_log(int32_t level, const char *msg, size_t msg_len);
HOSTCALL(proxy_get_log_level)
int32_t proxy_get_log_level(int32_t *level);
HOSTCALL(proxy_get_current_time_nanoseconds)
int32_t proxy_get_current_time_nanoseconds(uint64_t *nanos);
HOSTCALL(proxy_set_tick_period_milliseconds)
int32_t proxy_set_tick_period_milliseconds(uint32_t millis);

HOSTCALL(proxy_get_buffer_status)
int32_t proxy_get_buffer_status(int32_t buffer, uint32_t *size, uint32_t *flags);
HOSTCALL(proxy_get_buffer_bytes)
int32_t proxy_get_buffer_bytes(int32_t buffer, size_t start, size_t max_size, char **data,
                               size_t *size);
HOSTCALL(proxy_set_buffer_bytes)
int32_t proxy_set_buffer_bytes(int32_t buffer, size_t start, size_t size, const char *data,
                               size_t data_len);

HOSTCALL(proxy_get_header_map_pairs)
int32_t proxy_get_header_map_pairs(int32_t map, char **data, size_t *size);
HOSTCALL(proxy_set_header_map_pairs)
int32_t proxy_set_header_map_pairs(int32_t map, const char *data, size_t size);
HOSTCALL(proxy_get_header_map_value)
int32_t proxy_get_header_map_value(int32_t map, const char *key, size_t key_len, char **value,
                                   size_t *value_len);
HOSTCALL(proxy_add_header_map_value)
int32_t proxy_add_header_map_value(int32_t map, const char *key, size_t key_len,
                                   const char *value, size_t value_len);
HOSTCALL(proxy_replace_header_map_value)
int32_t proxy_replace_header_map_value(int32_t map, const char *key, size_t key_len,
                                       const char *value, size_t value_len);
HOSTCALL(proxy_remove_header_map_value)
int32_t proxy_remove_header_map_value(int32_t map, const char *key, size_t key_len);

HOSTCALL(proxy_continue_stream)
int32_t proxy_continue_stream(int32_t stream_type);
HOSTCALL(proxy_close_stream)
int32_t proxy_close_stream(int32_t stream_type);
HOSTCALL(proxy_get_status)
int32_t proxy_get_status(uint32_t *code, char **message, size_t *message_len);
HOSTCALL(proxy_send_local_response)
int32_t proxy_send_local_response(uint32_t status, const char *details, size_t details_len,
                                  const char *body, size_t body_len, const char *headers,
                                  size_t headers_len, int32_t grpc_status);

HOSTCALL(proxy_http_call)
int32_t proxy_http_call(const char *upstream, size_t upstream_len, const char *headers,
                        size_t headers_len, const char *body, size_t body_len,
                        const char *trailers, size_t trailers_len, uint32_t timeout_ms,
                        uint32_t *call_id);
HOSTCALL(proxy_grpc_call)
int32_t proxy_grpc_call(const char *upstream, size_t upstream_len, const char *service,
                        size_t service_len, const char *method, size_t method_len,
                        const char *metadata, size_t metadata_len, const char *message,
                        size_t message_len, uint32_t timeout_ms, uint32_t *call_id);

HOSTCALL(proxy_set_shared_data)
int32_t proxy_set_shared_data(const char *key, size_t key_len, const char *value,
                              size_t value_len, uint32_t cas);
HOSTCALL(proxy_get_shared_data)
int32_t proxy_get_shared_data(const char *key, size_t key_len, char **value, size_t *value_len,
                              uint32_t *cas);

HOSTCALL(proxy_register_shared_queue)
int32_t proxy_register_shared_queue(const char *name, size_t name_len, uint32_t *queue_id);
HOSTCALL(proxy_resolve_shared_queue)
int32_t proxy_resolve_shared_queue(const char *vm_id, size_t vm_id_len, const char *name,
                                   size_t name_len, uint32_t *queue_id);
HOSTCALL(proxy_enqueue_shared_queue)
int32_t proxy_enqueue_shared_queue(uint32_t queue_id, const char *value, size_t value_len);
HOSTCALL(proxy_dequeue_shared_queue)
int32_t proxy_dequeue_shared_queue(uint32_t queue_id, char **value, size_t *value_len);

HOSTCALL(proxy_define_metric)
int32_t proxy_define_metric(int32_t type, const char *name, size_t name_len, uint32_t *metric_id);
HOSTCALL(proxy_increment_metric)
int32_t proxy_increment_metric(uint32_t metric_id, int64_t delta);
HOSTCALL(proxy_record_metric)
int32_t proxy_record_metric(uint32_t metric_id, uint64_t value);
HOSTCALL(proxy_get_metric)
int32_t proxy_get_metric(uint32_t metric_id, uint64_t *value);

HOSTCALL(proxy_get_property)
int32_t proxy_get_property(const char *path, size_t path_len, char **value, size_t *value_len);
HOSTCALL(proxy_set_property)
int32_t proxy_set_property(const char *path, size_t path_len, const char *value,
                           size_t value_len);

HOSTCALL(proxy_set_effective_context)
int32_t proxy_set_effective_context(uint32_t context_id);
HOSTCALL(proxy_done)
int32_t proxy_done(void);
HOSTCALL(proxy_call_foreign_function)
int32_t proxy_call_foreign_function(const char *name, size_t name_len, const char *args,
                                    size_t args_len, char **results, size_t *results_len);

/* What the filter exports (the host calls these). */
#define CALLBACK(name) __attribute__((export_name(#name)))

/* ------------------------------------------------------------------------------------------ */
/* Small helpers: byte strings, a growable buffer, logging                                    */
/* ------------------------------------------------------------------------------------------ */

/* A borrowed byte string (not NUL-terminated). */
typedef struct {
    const char *ptr;
    size_t len;
} str;

/* A byte string the host gave us (allocated with our malloc): free it with bytes_free. */
typedef struct {
    char *ptr;
    size_t len;
} bytes;

#define S(literal) ((str){(literal), sizeof(literal) - 1})

static str view(bytes b) { return (str){b.ptr, b.len}; }

static void bytes_free(bytes *b) {
    free(b->ptr);
    *b = (bytes){0};
}

static bool str_eq(str s, const char *literal) {
    size_t n = strlen(literal);
    return s.len == n && memcmp(s.ptr, literal, n) == 0;
}

/* Whether `s` starts with `prefix`; if so, *rest is what follows it. */
static bool starts_with(str s, const char *prefix, str *rest) {
    size_t n = strlen(prefix);
    if (s.len < n || memcmp(s.ptr, prefix, n) != 0) return false;
    *rest = (str){s.ptr + n, s.len - n};
    return true;
}

/* Splits off the part of *rest before the first `sep`, and leaves *rest after it (or empty). */
static str split(str *rest, char sep) {
    const char *at = rest->len ? memchr(rest->ptr, sep, rest->len) : NULL;
    str head;
    if (!at) {
        head = *rest;
        *rest = (str){rest->ptr + rest->len, 0};
    } else {
        head = (str){rest->ptr, (size_t)(at - rest->ptr)};
        *rest = (str){at + 1, rest->len - head.len - 1};
    }
    return head;
}

/* Parses an optionally signed decimal number; false if `s` is not one. */
static bool parse_i64(str s, int64_t *out) {
    size_t i = 0;
    bool negative = false;
    uint64_t n = 0;
    if (s.len > 0 && (s.ptr[0] == '-' || s.ptr[0] == '+')) {
        negative = s.ptr[0] == '-';
        i = 1;
    }
    if (i == s.len || s.len - i > 19) return false;
    for (; i < s.len; i++) {
        if (s.ptr[i] < '0' || s.ptr[i] > '9') return false;
        n = n * 10 + (uint64_t)(s.ptr[i] - '0');
    }
    *out = negative ? -(int64_t)n : (int64_t)n;
    return true;
}

/* A growable byte buffer we own. Running out of memory traps: this is a test filter. */
typedef struct {
    char *ptr;
    size_t len, cap;
} buf;

static void buf_put(buf *b, const void *data, size_t n) {
    if (n == 0) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->len + n) cap *= 2;
        char *p = realloc(b->ptr, cap);
        if (!p) __builtin_trap();
        b->ptr = p;
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, data, n);
    b->len += n;
}

static void buf_str(buf *b, str s) { buf_put(b, s.ptr, s.len); }

static void buf_vprintf(buf *b, const char *fmt, va_list args) {
    char small[256];
    va_list again;
    va_copy(again, args);
    int n = vsnprintf(small, sizeof small, fmt, args);
    if (n < 0) {
        va_end(again);
        return;
    }
    if ((size_t)n < sizeof small) {
        buf_put(b, small, (size_t)n);
    } else {
        char *big = malloc((size_t)n + 1);
        if (!big) __builtin_trap();
        vsnprintf(big, (size_t)n + 1, fmt, again);
        buf_put(b, big, (size_t)n);
        free(big);
    }
    va_end(again);
}

__attribute__((format(printf, 2, 3))) static void buf_printf(buf *b, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    buf_vprintf(b, fmt, args);
    va_end(args);
}

static str buf_view(const buf *b) { return (str){b->ptr, b->len}; }

static void buf_free(buf *b) {
    free(b->ptr);
    *b = (buf){0};
}

/* Logs a formatted message through proxy_log. */
__attribute__((format(printf, 2, 3))) static void say(int32_t level, const char *fmt, ...) {
    buf line = {0};
    va_list args;
    va_start(args, fmt);
    buf_vprintf(&line, fmt, args);
    va_end(args);
    proxy_log(level, line.ptr, line.len);
    buf_free(&line);
}

/* ------------------------------------------------------------------------------------------ */
/* Header maps: serialized as u32 count, count x (u32 key_len, u32 value_len), then each key   */
/* and value followed by a NUL (little-endian; lengths exclude the NUL).                       */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    str key, value;
} pair;

static void put_u32(buf *b, uint32_t v) {
    unsigned char le[4] = {v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >> 24};
    buf_put(b, le, 4);
}

static uint32_t get_u32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

static buf serialize_pairs(const pair *pairs, size_t n) {
    buf out = {0};
    put_u32(&out, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        put_u32(&out, (uint32_t)pairs[i].key.len);
        put_u32(&out, (uint32_t)pairs[i].value.len);
    }
    for (size_t i = 0; i < n; i++) {
        buf_str(&out, pairs[i].key);
        buf_put(&out, "", 1);
        buf_str(&out, pairs[i].value);
        buf_put(&out, "", 1);
    }
    return out;
}

/* Parses a serialized map. On success *pairs (free it) points into `data`. */
static bool deserialize_pairs(str data, pair **pairs, size_t *count) {
    *pairs = NULL;
    *count = 0;
    if (data.len == 0) return true; /* an empty map may come back as no bytes at all */
    if (data.len < 4) return false;
    size_t n = get_u32(data.ptr);
    if (n > (data.len - 4) / 8) return false;
    pair *out = calloc(n ? n : 1, sizeof *out);
    if (!out) __builtin_trap();
    size_t at = 4 + n * 8;
    for (size_t i = 0; i < n; i++) {
        size_t key_len = get_u32(data.ptr + 4 + i * 8);
        size_t value_len = get_u32(data.ptr + 8 + i * 8);
        if (key_len >= data.len - at || data.ptr[at + key_len] != '\0') goto malformed;
        out[i].key = (str){data.ptr + at, key_len};
        at += key_len + 1;
        if (at >= data.len || value_len >= data.len - at || data.ptr[at + value_len] != '\0')
            goto malformed;
        out[i].value = (str){data.ptr + at, value_len};
        at += value_len + 1;
    }
    *pairs = out;
    *count = n;
    return true;
malformed:
    free(out);
    return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Hostcall wrappers                                                                           */
/* ------------------------------------------------------------------------------------------ */

static int32_t get_header(int32_t map, str name, bytes *value) {
    *value = (bytes){0};
    return proxy_get_header_map_value(map, name.ptr, name.len, &value->ptr, &value->len);
}

static int32_t add_header(int32_t map, str name, str value) {
    int32_t status = proxy_add_header_map_value(map, name.ptr, name.len, value.ptr, value.len);
    if (status != OK)
        say(LOG_WARN, "add header %.*s to map %d: status %d", (int)name.len, name.ptr, map,
            status);
    return status;
}

/* Reads `size` bytes of a buffer from its start (nothing to read when size is 0). */
static int32_t get_buffer(int32_t buffer, size_t size, bytes *data) {
    *data = (bytes){0};
    if (size == 0) return OK;
    return proxy_get_buffer_bytes(buffer, 0, size, &data->ptr, &data->len);
}

/* A property by its dotted name ("request.path"): dots become the NULs between segments. */
static int32_t get_property(str dotted, bytes *value) {
    *value = (bytes){0};
    char *path = malloc(dotted.len + 1);
    if (!path) __builtin_trap();
    for (size_t i = 0; i < dotted.len; i++) path[i] = dotted.ptr[i] == '.' ? '\0' : dotted.ptr[i];
    int32_t status = proxy_get_property(path, dotted.len, &value->ptr, &value->len);
    free(path);
    return status;
}

static int32_t set_property(str dotted, str value) {
    char *path = malloc(dotted.len + 1);
    if (!path) __builtin_trap();
    for (size_t i = 0; i < dotted.len; i++) path[i] = dotted.ptr[i] == '.' ? '\0' : dotted.ptr[i];
    int32_t status = proxy_set_property(path, dotted.len, value.ptr, value.len);
    free(path);
    return status;
}

/* Answers the current stream with a local response; returns the action for the callback:
 * PAUSE once the host took the response, CONTINUE (after logging) if it refused it. */
static uint32_t respond_with(uint32_t code, str body, const pair *headers, size_t n_headers) {
    buf map = {0};
    if (n_headers) map = serialize_pairs(headers, n_headers);
    int32_t status = proxy_send_local_response(code, "", 0, body.ptr, body.len, map.ptr, map.len, -1);
    buf_free(&map);
    if (status != OK) {
        say(LOG_ERROR, "send_local_response(%u): status %d", code, status);
        return CONTINUE;
    }
    return PAUSE;
}

static uint32_t respond(uint32_t code, str body) { return respond_with(code, body, NULL, 0); }

__attribute__((format(printf, 2, 3))) static uint32_t respondf(uint32_t code, const char *fmt,
                                                               ...) {
    buf body = {0};
    va_list args;
    va_start(args, fmt);
    buf_vprintf(&body, fmt, args);
    va_end(args);
    uint32_t action = respond(code, buf_view(&body));
    buf_free(&body);
    return action;
}

/* The answer of most commands: 200 "status=N". */
static uint32_t respond_status(int32_t status) { return respondf(200, "status=%d", status); }

/* 200 "PREFIX=VALUE" with VALUE any bytes (it may hold NULs, so no printf). */
static uint32_t respond_value(const char *prefix, str value) {
    buf body = {0};
    buf_put(&body, prefix, strlen(prefix));
    buf_str(&body, value);
    uint32_t action = respond(200, buf_view(&body));
    buf_free(&body);
    return action;
}

/* ------------------------------------------------------------------------------------------ */
/* Shared data: read-modify-write with compare-and-swap                                        */
/* ------------------------------------------------------------------------------------------ */

/* Computes a key's new value from its old one (found says whether the key existed). */
typedef void (*update_fn)(str old, bool found, buf *next, const void *arg);

/* Replaces `key`'s value by update(old), retrying while another VM changed it in between.
 * A key not yet set has no token to compare: its first write uses cas 0 (unconditional),
 * the ABI offers nothing better. Returns the status of the final set. */
static int32_t shared_update(str key, update_fn update, const void *arg) {
    for (int attempt = 0; attempt < 1000; attempt++) {
        bytes old = {0};
        uint32_t cas = 0;
        int32_t status = proxy_get_shared_data(key.ptr, key.len, &old.ptr, &old.len, &cas);
        if (status != OK && status != NOT_FOUND) return status;
        if (status == NOT_FOUND) cas = 0;
        buf next = {0};
        update(view(old), status == OK, &next, arg);
        bytes_free(&old);
        status = proxy_set_shared_data(key.ptr, key.len, next.ptr, next.len, cas);
        buf_free(&next);
        if (status != CAS_MISMATCH) return status;
    }
    return CAS_MISMATCH;
}

/* update_fn: the old value as a decimal number, plus one. */
static void increment_text(str old, bool found, buf *next, const void *arg) {
    (void)arg;
    int64_t n = 0;
    if (found && !parse_i64(old, &n)) n = 0;
    buf_printf(next, "%lld", (long long)(n + 1));
}

/* update_fn: the old value with `arg` (a str) appended, joined by ",". */
static void append_text(str old, bool found, buf *next, const void *arg) {
    const str *value = arg;
    if (found && old.len) {
        buf_str(next, old);
        buf_put(next, ",", 1);
    }
    buf_str(next, *value);
}

#define TICKS_KEY S("hostcalls.ticks")
#define QUEUE_SEEN_KEY S("hostcalls.queue.seen")

/* ------------------------------------------------------------------------------------------ */
/* Per-VM state: streams (their command) and HTTP calls in flight                             */
/* ------------------------------------------------------------------------------------------ */

/* A stream context and the :path it was opened with (owned). Filled in
 * proxy_on_request_headers, dropped in proxy_on_delete. */
#define MAX_STREAMS 1024
static struct stream {
    uint32_t id; /* 0: free slot */
    bytes path;
} streams[MAX_STREAMS];

static struct stream *stream_find(uint32_t id) {
    for (size_t i = 0; i < MAX_STREAMS; i++)
        if (streams[i].id == id) return &streams[i];
    return NULL;
}

/* Records the stream's path, taking it over; NULL (and the path freed) if the table is full. */
static struct stream *stream_add(uint32_t id, bytes path) {
    struct stream *s = stream_find(id);
    if (!s) s = stream_find(0);
    if (!s) {
        say(LOG_ERROR, "more than %d streams at once: stream %u runs no command", MAX_STREAMS, id);
        bytes_free(&path);
        return NULL;
    }
    bytes_free(&s->path);
    s->id = id;
    s->path = path;
    return s;
}

/* The stream's whole :path (query string included), or "" if it has none. */
static str stream_path(uint32_t id) {
    struct stream *s = id ? stream_find(id) : NULL;
    return s ? view(s->path) : S("");
}

/* The stream's command: its :path without the query string. */
static str command(uint32_t id) {
    str path = stream_path(id);
    return split(&path, '?');
}

/* Misbehaves in callback `where` when the command asks: /t/trap/WHERE traps, /t/loop/WHERE spins
   until the host's callback time limit stops it. */
static void misbehave(str cmd, const char *where) {
    str rest;
    if (starts_with(cmd, "/t/trap/", &rest) && str_eq(rest, where)) __builtin_trap();
    if (starts_with(cmd, "/t/loop/", &rest) && str_eq(rest, where)) {
        volatile uint32_t spins = 0;
        for (;;) spins++;
    }
}

/* What to do when an HTTP call's response arrives. */
enum call_kind {
    CALL_RESPOND,  /* /t/http_call: answer the stream with the call's status and body */
    CALL_CONTINUE, /* /t/http_call_continue: tag the request and let it go on */
    CALL_TRAP,     /* /t/trap/http_call_response */
    CALL_LOOP,     /* /t/loop/http_call_response */
    CALL_BODY,     /* /t/body/request/call: prefix the paused request body, let it go on */
};

#define MAX_CALLS 64
static struct call {
    bool used;
    uint32_t id;
    uint32_t stream;
    enum call_kind kind;
} calls[MAX_CALLS];

static struct call *call_find(uint32_t id) {
    for (size_t i = 0; i < MAX_CALLS; i++)
        if (calls[i].used && calls[i].id == id) return &calls[i];
    return NULL;
}

static struct call *call_free_slot(void) {
    for (size_t i = 0; i < MAX_CALLS; i++)
        if (!calls[i].used) return &calls[i];
    return NULL;
}

/* Sends GET "/"+rest to `upstream` for the stream, to be finished by `kind` when the response
 * arrives. Pauses the stream, or answers "status=N" if the host refused the call. */
static uint32_t start_call(uint32_t stream, str upstream, str rest, enum call_kind kind) {
    struct call *slot = call_free_slot();
    if (!slot) return respondf(503, "more than %d calls in flight", MAX_CALLS);
    buf path = {0};
    buf_put(&path, "/", 1);
    buf_str(&path, rest);
    pair headers[] = {
        {S(":method"), S("GET")},
        {S(":path"), buf_view(&path)},
        {S(":authority"), upstream},
        {S("x-from-filter"), S("1")},
    };
    buf map = serialize_pairs(headers, 4);
    uint32_t id = 0;
    int32_t status = proxy_http_call(upstream.ptr, upstream.len, map.ptr, map.len, NULL, 0, NULL,
                                     0, 5000, &id);
    buf_free(&map);
    buf_free(&path);
    if (status != OK) return respond_status(status);
    *slot = (struct call){.used = true, .id = id, .stream = stream, .kind = kind};
    return PAUSE;
}

/* A shared queue of this filter's VMs by name (resolved with our own vm id). */
static int32_t resolve_queue(str name, uint32_t *id) {
    bytes vm_id = {0};
    if (get_property(S("plugin_vm_id"), &vm_id) != OK) vm_id = (bytes){0}; /* "" = our own */
    int32_t status = proxy_resolve_shared_queue(vm_id.ptr, vm_id.len, name.ptr, name.len, id);
    bytes_free(&vm_id);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* Start-up and timers                                                                         */
/* ------------------------------------------------------------------------------------------ */

CALLBACK(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

/* Per root context (plugin): the label its configuration gave, for /t/plugin. */
#define MAX_ROOTS 8
static struct {
    uint32_t id;
    char label[32];
    size_t len;
} root_labels[MAX_ROOTS];
/* Stream contexts this VM created, and the root each recent one was created for. */
static uint32_t streams_created;
static uint32_t parent_of[1024];

CALLBACK(proxy_on_context_create) void proxy_on_context_create(uint32_t id, uint32_t parent) {
    /* stream state is created on the request headers, where the path is known */
    if (parent != 0) {
        streams_created++;
        parent_of[id % 1024] = parent;
    }
}

static str root_label(uint32_t root) {
    for (size_t i = 0; i < MAX_ROOTS; i++)
        if (root_labels[i].id == root) return (str){root_labels[i].label, root_labels[i].len};
    return S("");
}

/* /t/plugin */
static uint32_t plugin_header(uint32_t ctx) {
    bytes name = {0}, root_id = {0}, vm_id = {0};
    get_property(S("plugin_name"), &name);
    get_property(S("plugin_root_id"), &root_id);
    get_property(S("plugin_vm_id"), &vm_id);
    buf header = {0};
    buf_put(&header, "x-plugin-", 9);
    buf_str(&header, view(root_id));
    buf value = {0};
    buf_printf(&value, "name=%.*s;vm=%.*s;label=", (int)name.len, name.ptr ? name.ptr : "",
               (int)vm_id.len, vm_id.ptr ? vm_id.ptr : "");
    buf_str(&value, root_label(parent_of[ctx % 1024]));
    buf_printf(&value, ";streams=%u", streams_created);
    int32_t status = proxy_add_header_map_value(MAP_REQUEST_HEADERS, header.ptr, header.len,
                                                value.ptr, value.len);
    if (status != OK) say(LOG_WARN, "add_header_map_value: status %d", status);
    buf_free(&header);
    buf_free(&value);
    bytes_free(&name);
    bytes_free(&root_id);
    bytes_free(&vm_id);
    return CONTINUE;
}

CALLBACK(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root, uint32_t vm_config_len) {
    (void)root;
    (void)vm_config_len;
    say(LOG_INFO, "hostcalls vm started");
    return 1;
}

CALLBACK(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, uint32_t config_len) {
    bytes config = {0};
    int32_t status = get_buffer(BUFFER_PLUGIN_CONFIG, config_len, &config);
    if (status != OK) {
        say(LOG_ERROR, "hostcalls: reading the configuration: status %d", status);
        return 0;
    }
    str text = view(config);
    while (text.len && (text.ptr[text.len - 1] == '\n' || text.ptr[text.len - 1] == ' '))
        text.len--;
    str rest;
    uint32_t ok = 1;
    if (text.len == 0) {
        /* nothing to configure */
    } else if (str_eq(text, "fail-configure")) {
        say(LOG_ERROR, "hostcalls: failing on_configure as configured");
        ok = 0;
    } else if (starts_with(text, "label=", &rest)) {
        for (size_t i = 0; i < MAX_ROOTS; i++) {
            if (root_labels[i].id == 0 || root_labels[i].id == root) {
                root_labels[i].id = root;
                root_labels[i].len = rest.len < 32 ? rest.len : 32;
                memcpy(root_labels[i].label, rest.ptr, root_labels[i].len);
                break;
            }
        }
    } else if (starts_with(text, "tick=", &rest)) {
        int64_t millis;
        if (!parse_i64(rest, &millis) || millis <= 0 || millis > UINT32_MAX) {
            say(LOG_ERROR, "hostcalls: bad tick period \"%.*s\"", (int)rest.len, rest.ptr);
            ok = 0;
        } else if ((status = proxy_set_tick_period_milliseconds((uint32_t)millis)) != OK) {
            say(LOG_ERROR, "hostcalls: set_tick_period_milliseconds: status %d", status);
            ok = 0;
        }
    } else {
        say(LOG_ERROR, "hostcalls: unknown configuration \"%.*s\" (want \"\", tick=MS, "
                       "label=TEXT or fail-configure)", (int)text.len, text.ptr);
        ok = 0;
    }
    bytes_free(&config);
    return ok;
}

CALLBACK(proxy_on_tick) void proxy_on_tick(uint32_t root) {
    (void)root;
    int32_t status = shared_update(TICKS_KEY, increment_text, NULL);
    if (status != OK) say(LOG_ERROR, "hostcalls: counting a tick: status %d", status);
}

/* ------------------------------------------------------------------------------------------ */
/* Request headers: where most commands run                                                    */
/* ------------------------------------------------------------------------------------------ */

/* /t/echo/header/NAME */
static uint32_t echo_header(str name) {
    bytes value;
    int32_t status = get_header(MAP_REQUEST_HEADERS, name, &value);
    uint32_t action;
    if (status == OK)
        action = respond(200, view(value));
    else if (status == NOT_FOUND)
        action = respond(404, S("not found"));
    else
        action = respond_status(status);
    bytes_free(&value);
    return action;
}

/* /t/echo/headers */
static uint32_t echo_headers(void) {
    bytes map = {0};
    int32_t status = proxy_get_header_map_pairs(MAP_REQUEST_HEADERS, &map.ptr, &map.len);
    if (status != OK) return respond_status(status);
    pair *pairs;
    size_t n;
    if (!deserialize_pairs(view(map), &pairs, &n)) {
        bytes_free(&map);
        return respond(500, S("malformed header map from the host"));
    }
    buf body = {0};
    for (size_t i = 0; i < n; i++) {
        buf_str(&body, pairs[i].key);
        buf_put(&body, ": ", 2);
        buf_str(&body, pairs[i].value);
        buf_put(&body, "\n", 1);
    }
    uint32_t action = respond(200, buf_view(&body));
    buf_free(&body);
    free(pairs);
    bytes_free(&map);
    return action;
}

/* /t/log/property/DOTTED.PATH */
static uint32_t log_property(str dotted) {
    bytes value;
    int32_t status = get_property(dotted, &value);
    uint32_t action;
    if (status == OK) {
        say(LOG_INFO, "property %.*s: %.*s", (int)dotted.len, dotted.ptr, (int)value.len,
            value.ptr ? value.ptr : "");
        action = respond(200, view(value));
    } else if (status == NOT_FOUND) {
        action = respond(404, S("not found"));
    } else {
        action = respond_status(status);
    }
    bytes_free(&value);
    return action;
}

/* /t/send_local_response/CODE */
static uint32_t send_local_response(str code_text) {
    int64_t code = 0;
    if (!parse_i64(code_text, &code) || code < 0 || code > 999) code = 0; /* host refuses 0 */
    buf body = {0};
    buf_put(&body, "local ", 6);
    buf_str(&body, code_text);
    pair headers[] = {{S("x-local"), S("1")}};
    uint32_t action = respond_with((uint32_t)code, buf_view(&body), headers, 1);
    buf_free(&body);
    return action;
}

/* /t/set_request_headers: the pseudo-headers as they are, then x-replaced twice. */
static uint32_t set_request_headers(void) {
    static const str pseudo[] = {S(":method"), S(":path"), S(":authority"), S(":scheme")};
    bytes values[4] = {{0}};
    pair pairs[6];
    size_t n = 0;
    for (size_t i = 0; i < 4; i++)
        if (get_header(MAP_REQUEST_HEADERS, pseudo[i], &values[i]) == OK)
            pairs[n++] = (pair){pseudo[i], view(values[i])};
    pairs[n++] = (pair){S("x-replaced"), S("1")};
    pairs[n++] = (pair){S("x-replaced"), S("2")};
    buf map = serialize_pairs(pairs, n);
    int32_t status = proxy_set_header_map_pairs(MAP_REQUEST_HEADERS, map.ptr, map.len);
    if (status != OK) say(LOG_WARN, "set_header_map_pairs: status %d", status);
    buf_free(&map);
    for (size_t i = 0; i < 4; i++) bytes_free(&values[i]);
    return CONTINUE;
}

/* /t/shared_data/set/KEY/VALUE[/CAS] */
static uint32_t shared_data_set(str rest) {
    str key = split(&rest, '/');
    str value = split(&rest, '/');
    int64_t cas = 0;
    if (rest.len && !parse_i64(rest, &cas)) return respond(400, S("bad cas"));
    return respond_status(
        proxy_set_shared_data(key.ptr, key.len, value.ptr, value.len, (uint32_t)cas));
}

/* /t/shared_data/get/KEY */
static uint32_t shared_data_get(str key) {
    bytes value = {0};
    uint32_t cas = 0;
    int32_t status = proxy_get_shared_data(key.ptr, key.len, &value.ptr, &value.len, &cas);
    if (status != OK) return respond_status(status);
    buf body = {0};
    buf_str(&body, view(value));
    buf_printf(&body, " cas=%u", cas);
    uint32_t action = respond(200, buf_view(&body));
    buf_free(&body);
    bytes_free(&value);
    return action;
}

/* /t/ticks and /t/queue/seen: a shared value, or `missing` if it is not set. */
static uint32_t shared_data_show(str key, str missing) {
    bytes value = {0};
    uint32_t cas = 0;
    int32_t status = proxy_get_shared_data(key.ptr, key.len, &value.ptr, &value.len, &cas);
    uint32_t action;
    if (status == OK)
        action = respond(200, view(value));
    else if (status == NOT_FOUND)
        action = respond(200, missing);
    else
        action = respond_status(status);
    bytes_free(&value);
    return action;
}

/* /t/queue/register/NAME */
static uint32_t queue_register(str name) {
    uint32_t id = 0;
    int32_t status = proxy_register_shared_queue(name.ptr, name.len, &id);
    return status == OK ? respondf(200, "id=%u", id) : respond_status(status);
}

/* /t/queue/enqueue/NAME/VALUE */
static uint32_t queue_enqueue(str rest) {
    str name = split(&rest, '/');
    uint32_t id = 0;
    int32_t status = resolve_queue(name, &id);
    if (status == OK) status = proxy_enqueue_shared_queue(id, rest.ptr, rest.len);
    return respond_status(status);
}

/* /t/queue/dequeue/NAME */
static uint32_t queue_dequeue(str name) {
    uint32_t id = 0;
    int32_t status = resolve_queue(name, &id);
    if (status != OK) return respond_status(status);
    bytes value = {0};
    status = proxy_dequeue_shared_queue(id, &value.ptr, &value.len);
    uint32_t action = status == OK ? respond_value("value=", view(value)) : respond_status(status);
    bytes_free(&value);
    return action;
}

/* /t/metrics/KIND/NAME/NUMBER */
static uint32_t metrics(str rest) {
    str kind = split(&rest, '/');
    str name = split(&rest, '/');
    int64_t number;
    if (!parse_i64(rest, &number)) return respond(400, S("bad number"));
    int32_t type;
    if (str_eq(kind, "counter"))
        type = METRIC_COUNTER;
    else if (str_eq(kind, "gauge"))
        type = METRIC_GAUGE;
    else if (str_eq(kind, "histogram"))
        type = METRIC_HISTOGRAM;
    else
        return respond(400, S("unknown metric type"));
    uint32_t id = 0;
    int32_t status = proxy_define_metric(type, name.ptr, name.len, &id);
    if (status != OK) return respond_status(status);
    if (type == METRIC_COUNTER)
        status = proxy_increment_metric(id, number);
    else
        status = proxy_record_metric(id, (uint64_t)number);
    if (type == METRIC_HISTOGRAM || status != OK) return respond_status(status);
    uint64_t value = 0;
    status = proxy_get_metric(id, &value);
    if (status != OK) return respond_status(status);
    return respondf(200, "value=%llu", (unsigned long long)value);
}

/* /t/property/set/NAME/VALUE */
static uint32_t property_set(str rest) {
    str name = split(&rest, '/');
    int32_t status = set_property(name, rest);
    if (status != OK) return respond_status(status);
    bytes value;
    status = get_property(name, &value);
    uint32_t action = status == OK ? respond_value("value=", view(value)) : respond_status(status);
    bytes_free(&value);
    return action;
}

/* /t/random: 16 bytes from WASI random_get. */
static uint32_t random_bytes(void) {
    unsigned char bytes[16] = {0};
    if (getentropy(bytes, sizeof bytes) != 0) return respond(200, S("random failed"));
    for (size_t i = 0; i < sizeof bytes; i++)
        if (bytes[i]) return respond(200, S("ok"));
    return respond(200, S("zero"));
}

/* /t/bad/...: hostcalls with bad arguments; the answer is the status they returned. */
static uint32_t bad(str what) {
    /* An address far past the end of any memory the VM may have. */
    char *const wild = (char *)(uintptr_t)0xFFFFFFF0u;
    bytes value = {0};
    int32_t status;
    if (str_eq(what, "map")) {
        status = get_header(99, S("x"), &value);
    } else if (str_eq(what, "pointer")) {
        status = proxy_get_header_map_value(MAP_REQUEST_HEADERS, wild, 16, &value.ptr, &value.len);
    } else if (str_eq(what, "return_pointer")) {
        status = proxy_get_header_map_value(MAP_REQUEST_HEADERS, ":path", 5, (char **)wild,
                                            (size_t *)wild);
    } else if (str_eq(what, "log_level")) {
        status = proxy_log(99, "x", 1);
    } else if (str_eq(what, "buffer")) {
        status = proxy_get_buffer_bytes(99, 0, 1, &value.ptr, &value.len);
    } else if (str_eq(what, "pairs")) {
        /* Claims 5 pairs, holds 3 bytes. */
        status = proxy_set_header_map_pairs(MAP_REQUEST_HEADERS, "\x05\0\0\0abc", 7);
    } else if (str_eq(what, "effective_context")) {
        status = proxy_set_effective_context(99999);
    } else if (str_eq(what, "local_response_status")) {
        status = proxy_send_local_response(42, "", 0, "x", 1, NULL, 0, -1);
    } else if (str_eq(what, "metric")) {
        status = proxy_increment_metric(99999, 1);
    } else if (str_eq(what, "queue")) {
        status = proxy_enqueue_shared_queue(99999, "x", 1);
    } else if (str_eq(what, "http_call_upstream") || str_eq(what, "http_call_headers")) {
        bytes upstream = {0};
        str name = S("no-such-upstream");
        bool with_path = str_eq(what, "http_call_upstream");
        if (!with_path) {
            if (get_header(MAP_REQUEST_HEADERS, S("x-upstream"), &upstream) != OK)
                return respond(400, S("x-upstream header missing"));
            name = view(upstream);
        }
        pair headers[] = {{S(":method"), S("GET")}, {S(":authority"), name}, {S(":path"), S("/")}};
        buf map = serialize_pairs(headers, with_path ? 3 : 2); /* the second lacks :path */
        uint32_t id = 0;
        status = proxy_http_call(name.ptr, name.len, map.ptr, map.len, NULL, 0, NULL, 0, 5000, &id);
        buf_free(&map);
        bytes_free(&upstream);
    } else {
        return CONTINUE; /* unknown: untouched */
    }
    bytes_free(&value); /* in case a call unexpectedly succeeded */
    return respond_status(status);
}

/* /t/http_call/UPSTREAM/REST and /t/http_call_continue/UPSTREAM/REST, `rest` pointing into the
 * command after its prefix. REST is taken from the whole :path, so a query string goes along. */
static uint32_t http_call(uint32_t ctx, str rest, enum call_kind kind) {
    str path = stream_path(ctx); /* the command is its beginning */
    rest.len = path.len - (size_t)(rest.ptr - path.ptr);
    size_t n = 0; /* the upstream name ends at the first '/' or '?' */
    while (n < rest.len && rest.ptr[n] != '/' && rest.ptr[n] != '?') n++;
    str upstream = {rest.ptr, n};
    if (n < rest.len && rest.ptr[n] == '/') n++;
    return start_call(ctx, upstream, (str){rest.ptr + n, rest.len - n}, kind);
}

/* The request's command, run from proxy_on_request_headers. */
static uint32_t run_command(uint32_t ctx, str cmd) {
    str rest;
    if (!starts_with(cmd, "/t/", &rest)) return CONTINUE;

    /* Answers built from the request */
    if (starts_with(cmd, "/t/echo/header/", &rest)) return echo_header(rest);
    if (str_eq(cmd, "/t/echo/headers")) return echo_headers();
    if (starts_with(cmd, "/t/log/property/", &rest)) return log_property(rest);
    if (str_eq(cmd, "/t/plugin")) return plugin_header(ctx);
    if (starts_with(cmd, "/t/env/", &rest)) {
        char name[256];
        if (rest.len >= sizeof name) return respond(400, S("name too long"));
        memcpy(name, rest.ptr, rest.len);
        name[rest.len] = 0;
        const char *value = getenv(name);
        return value ? respond(200, (str){value, strlen(value)}) : respond(404, S("not set"));
    }
    if (starts_with(cmd, "/t/send_local_response/", &rest)) return send_local_response(rest);

    /* Request header changes (the request then goes on) */
    if (starts_with(cmd, "/t/set_request_header/", &rest)) {
        str name = split(&rest, '/');
        int32_t status = proxy_replace_header_map_value(MAP_REQUEST_HEADERS, name.ptr, name.len,
                                                        rest.ptr, rest.len);
        if (status != OK) say(LOG_WARN, "replace_header_map_value: status %d", status);
        return CONTINUE;
    }
    if (starts_with(cmd, "/t/add_request_header/", &rest)) {
        str name = split(&rest, '/');
        add_header(MAP_REQUEST_HEADERS, name, rest);
        return CONTINUE;
    }
    if (starts_with(cmd, "/t/remove_request_header/", &rest)) {
        int32_t status = proxy_remove_header_map_value(MAP_REQUEST_HEADERS, rest.ptr, rest.len);
        if (status != OK) say(LOG_WARN, "remove_header_map_value: status %d", status);
        return CONTINUE;
    }
    if (str_eq(cmd, "/t/set_request_headers")) return set_request_headers();

    /* Shared data, queues, metrics, properties */
    if (starts_with(cmd, "/t/shared_data/set/", &rest)) return shared_data_set(rest);
    if (starts_with(cmd, "/t/shared_data/get/", &rest)) return shared_data_get(rest);
    if (str_eq(cmd, "/t/ticks")) return shared_data_show(TICKS_KEY, S("0"));
    if (starts_with(cmd, "/t/queue/register/", &rest)) return queue_register(rest);
    if (starts_with(cmd, "/t/queue/enqueue/", &rest)) return queue_enqueue(rest);
    if (str_eq(cmd, "/t/queue/seen")) return shared_data_show(QUEUE_SEEN_KEY, S(""));
    if (starts_with(cmd, "/t/queue/dequeue/", &rest)) return queue_dequeue(rest);
    if (starts_with(cmd, "/t/metrics/", &rest)) return metrics(rest);
    if (starts_with(cmd, "/t/property/set/", &rest)) return property_set(rest);

    /* Odds and ends */
    if (str_eq(cmd, "/t/time")) {
        uint64_t nanos = 0;
        int32_t status = proxy_get_current_time_nanoseconds(&nanos);
        if (status != OK) return respond_status(status);
        return respond(200, nanos ? S("ok") : S("zero"));
    }
    if (str_eq(cmd, "/t/log_level")) {
        int32_t level = 0;
        int32_t status = proxy_get_log_level(&level);
        return status == OK ? respondf(200, "level=%d", level) : respond_status(status);
    }
    if (starts_with(cmd, "/t/stdout/", &rest)) {
        printf("stdout says %.*s\n", (int)rest.len, rest.ptr);
        fflush(stdout);
        fprintf(stderr, "stderr says %.*s\n", (int)rest.len, rest.ptr);
        return CONTINUE;
    }
    if (str_eq(cmd, "/t/random")) return random_bytes();
    if (str_eq(cmd, "/t/foreign")) {
        bytes results = {0};
        int32_t status = proxy_call_foreign_function("x", 1, "", 0, &results.ptr, &results.len);
        bytes_free(&results);
        return respond_status(status);
    }
    if (str_eq(cmd, "/t/grpc")) {
        uint32_t id = 0;
        return respond_status(
            proxy_grpc_call("x", 1, "s", 1, "m", 1, NULL, 0, NULL, 0, 1000, &id));
    }
    if (str_eq(cmd, "/t/done")) return respond_status(proxy_done());
    if (str_eq(cmd, "/t/status")) {
        uint32_t code = 0;
        bytes message = {0};
        int32_t status = proxy_get_status(&code, &message.ptr, &message.len);
        bytes_free(&message);
        return respond_status(status);
    }

    /* HTTP calls. REST comes from the whole :path, so a query string goes along. */
    if (starts_with(cmd, "/t/http_call/", &rest))
        return http_call(ctx, rest, CALL_RESPOND);
    if (starts_with(cmd, "/t/http_call_continue/", &rest))
        return http_call(ctx, rest, CALL_CONTINUE);

    /* The stream's life */
    if (str_eq(cmd, "/t/close")) {
        int32_t status = proxy_close_stream(STREAM_REQUEST);
        if (status != OK) say(LOG_WARN, "close_stream: status %d", status);
        return PAUSE;
    }
    if (str_eq(cmd, "/t/pause/forever")) return PAUSE; /* the host times the stream out */

    /* Misbehaviour */
    if (starts_with(cmd, "/t/bad/", &rest)) return bad(rest);
    misbehave(cmd, "request_headers");
    if (str_eq(cmd, "/t/trap/http_call_response") || str_eq(cmd, "/t/loop/http_call_response")) {
        bytes upstream;
        if (get_header(MAP_REQUEST_HEADERS, S("x-upstream"), &upstream) != OK)
            return respond(400, S("x-upstream header missing"));
        enum call_kind kind = str_eq(cmd, "/t/trap/http_call_response") ? CALL_TRAP : CALL_LOOP;
        uint32_t action = start_call(ctx, view(upstream), S(""), kind);
        bytes_free(&upstream);
        return action;
    }
    if (str_eq(cmd, "/t/loop")) {
        volatile uint32_t spins = 0;
        for (;;) spins++; /* the host's callback time limit must stop this */
    }
    if (str_eq(cmd, "/t/memory/grow")) {
        size_t size = (size_t)512 << 20; /* 512 MiB: memory.grow by 8192 pages or more */
        volatile char *big = malloc(size);
        if (!big) return respond(200, S("grow failed"));
        big[0] = big[size - 1] = 1; /* used, so the compiler cannot drop the malloc */
        free((void *)big);
        return respond(200, S("grew"));
    }
    if (str_eq(cmd, "/t/memory/grow_page")) {
        /* One more 64 KiB page, kept: the VM grows towards its memory cap. */
        if (__builtin_wasm_memory_grow(0, 1) == (size_t)-1) return respond(200, S("grow failed"));
        char pages[32];
        int n = snprintf(pages, sizeof pages, "pages=%zu", __builtin_wasm_memory_size(0));
        return respond(200, (str){pages, (size_t)n});
    }
    return CONTINUE; /* unknown /t/ path: untouched */
}

CALLBACK(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t num_headers, uint32_t end_of_stream) {
    (void)num_headers;
    (void)end_of_stream;
    bytes path;
    if (get_header(MAP_REQUEST_HEADERS, S(":path"), &path) != OK) return CONTINUE;
    if (!stream_add(ctx, path)) return CONTINUE;
    return run_command(ctx, command(ctx));
}

/* ------------------------------------------------------------------------------------------ */
/* Bodies and trailers                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* Replaces a whole body buffer (body_size bytes) by prefix + transform(body). */
static void rewrite_body(int32_t buffer, size_t body_size, const char *prefix, bool upper) {
    bytes body;
    int32_t status = get_buffer(buffer, body_size, &body);
    if (status != OK) {
        say(LOG_ERROR, "get_buffer_bytes(%d): status %d", buffer, status);
        return;
    }
    buf out = {0};
    buf_put(&out, prefix, strlen(prefix));
    for (size_t i = 0; i < body.len; i++) {
        char c = body.ptr[i];
        if (upper && c >= 'a' && c <= 'z') c = (char)(c - 'a' + 'A');
        buf_put(&out, &c, 1);
    }
    status = proxy_set_buffer_bytes(buffer, 0, body_size, out.ptr, out.len);
    if (status != OK) say(LOG_ERROR, "set_buffer_bytes(%d): status %d", buffer, status);
    buf_free(&out);
    bytes_free(&body);
}

CALLBACK(proxy_on_request_body)
uint32_t proxy_on_request_body(uint32_t ctx, uint32_t body_size, uint32_t end_of_stream) {
    str cmd = command(ctx);
    misbehave(cmd, "request_body");
    if (str_eq(cmd, "/t/body/request/upper")) {
        if (!end_of_stream) return PAUSE; /* let the host buffer until the whole body is in */
        rewrite_body(BUFFER_REQUEST_BODY, body_size, "", true);
    } else if (str_eq(cmd, "/t/body/request/call")) {
        /* The whole body, then an HTTP call; the body waits (paused at its end) for the answer. */
        if (!end_of_stream) return PAUSE;
        return start_call(ctx, S("backend"), S("callout"), CALL_BODY);
    } else if (str_eq(cmd, "/t/body/request/size") && end_of_stream) {
        say(LOG_INFO, "request body size %u", body_size);
    }
    return CONTINUE;
}

CALLBACK(proxy_on_request_trailers)
uint32_t proxy_on_request_trailers(uint32_t ctx, uint32_t num_trailers) {
    if (str_eq(command(ctx), "/t/trailers")) say(LOG_INFO, "request trailers n=%u", num_trailers);
    return CONTINUE;
}

CALLBACK(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t num_headers, uint32_t end_of_stream) {
    (void)num_headers;
    (void)end_of_stream;
    str cmd = command(ctx), rest;
    misbehave(cmd, "response_headers");
    add_header(MAP_RESPONSE_HEADERS, S("x-hostcalls"), S("1"));
    if (starts_with(cmd, "/t/add_response_header/", &rest)) {
        str name = split(&rest, '/');
        add_header(MAP_RESPONSE_HEADERS, name, rest);
    } else if (starts_with(cmd, "/t/set_status/", &rest)) {
        int32_t status = proxy_replace_header_map_value(MAP_RESPONSE_HEADERS, ":status", 7,
                                                        rest.ptr, rest.len);
        if (status != OK) say(LOG_WARN, "replace :status: status %d", status);
    } else if (str_eq(cmd, "/t/body/response/prefix")) {
        /* The body grows: its old length no longer holds. */
        proxy_remove_header_map_value(MAP_RESPONSE_HEADERS, "content-length", 14);
    }
    return CONTINUE;
}

CALLBACK(proxy_on_response_body)
uint32_t proxy_on_response_body(uint32_t ctx, uint32_t body_size, uint32_t end_of_stream) {
    str cmd = command(ctx);
    misbehave(cmd, "response_body");
    /* .../prefix_keep_length leaves content-length alone: pier must drop it. */
    str rest;
    if (starts_with(cmd, "/t/body/response/prefix", &rest)) {
        if (!end_of_stream) return PAUSE; /* buffer until the whole body is in */
        rewrite_body(BUFFER_RESPONSE_BODY, body_size, "filtered:", false);
    }
    return CONTINUE;
}

CALLBACK(proxy_on_response_trailers)
uint32_t proxy_on_response_trailers(uint32_t ctx, uint32_t num_trailers) {
    if (str_eq(command(ctx), "/t/trailers")) {
        add_header(MAP_RESPONSE_TRAILERS, S("x-filter-trailer"), S("1"));
        say(LOG_INFO, "response trailers n=%u", num_trailers);
    }
    return CONTINUE;
}

/* ------------------------------------------------------------------------------------------ */
/* HTTP call responses and queues (on the root context)                                        */
/* ------------------------------------------------------------------------------------------ */

CALLBACK(proxy_on_http_call_response)
void proxy_on_http_call_response(uint32_t root, uint32_t call_id, uint32_t num_headers,
                                 uint32_t body_size, uint32_t num_trailers) {
    (void)root;
    (void)num_trailers;
    struct call *slot = call_find(call_id);
    if (!slot) {
        say(LOG_WARN, "hostcalls: response to unknown call %u", call_id);
        return;
    }
    struct call call = *slot;
    slot->used = false;
    if (call.kind == CALL_TRAP) __builtin_trap();
    if (call.kind == CALL_LOOP) {
        volatile uint32_t spins = 0;
        for (;;) spins++;
    }

    /* Act on the stream that made the call. */
    int32_t status = proxy_set_effective_context(call.stream);
    if (status != OK) {
        say(LOG_WARN, "hostcalls: call %u: stream %u is gone (status %d)", call_id, call.stream,
            status);
        return;
    }
    bool failed = num_headers == 0;
    uint32_t code = 0;
    if (!failed) {
        bytes message = {0};
        status = proxy_get_status(&code, &message.ptr, &message.len);
        bytes_free(&message);
        if (status != OK) say(LOG_WARN, "get_status: status %d", status);
    }

    if (call.kind == CALL_RESPOND) {
        if (failed) {
            respond(502, S("call failed"));
            return;
        }
        bytes body;
        status = get_buffer(BUFFER_CALL_RESPONSE_BODY, body_size, &body);
        if (status != OK) say(LOG_WARN, "call body: status %d", status);
        buf text = {0};
        buf_printf(&text, "call status=%u body=", code);
        buf_str(&text, view(body));
        respond(200, buf_view(&text));
        buf_free(&text);
        bytes_free(&body);
    } else if (call.kind == CALL_BODY) {
        /* The paused request body becomes "<call body>|<body>", then goes on. */
        bytes answer = {0};
        if (!failed && body_size) get_buffer(BUFFER_CALL_RESPONSE_BODY, body_size, &answer);
        char prefix[256];
        snprintf(prefix, sizeof prefix, "%.*s|", (int)view(answer).len,
                 view(answer).ptr ? view(answer).ptr : "");
        bytes_free(&answer);
        uint32_t size = 0, flags = 0;
        status = proxy_get_buffer_status(BUFFER_REQUEST_BODY, &size, &flags);
        if (status != OK) say(LOG_ERROR, "get_buffer_status: status %d", status);
        rewrite_body(BUFFER_REQUEST_BODY, size, prefix, false);
        status = proxy_continue_stream(STREAM_REQUEST);
        if (status != OK) say(LOG_ERROR, "continue_stream: status %d", status);
    } else { /* CALL_CONTINUE */
        buf value = {0};
        if (failed)
            buf_put(&value, "failed", 6);
        else
            buf_printf(&value, "%u", code);
        add_header(MAP_REQUEST_HEADERS, S("x-call-status"), buf_view(&value));
        buf_free(&value);
        status = proxy_continue_stream(STREAM_REQUEST);
        if (status != OK) say(LOG_ERROR, "continue_stream: status %d", status);
    }
}

CALLBACK(proxy_on_queue_ready) void proxy_on_queue_ready(uint32_t root, uint32_t queue_id) {
    (void)root;
    for (;;) {
        bytes value = {0};
        int32_t status = proxy_dequeue_shared_queue(queue_id, &value.ptr, &value.len);
        if (status != OK) {
            if (status != EMPTY) say(LOG_WARN, "dequeue %u: status %d", queue_id, status);
            break;
        }
        str v = view(value);
        say(LOG_INFO, "queue ready: %.*s", (int)v.len, v.ptr ? v.ptr : "");
        status = shared_update(QUEUE_SEEN_KEY, append_text, &v);
        if (status != OK) say(LOG_ERROR, "recording a queue value: status %d", status);
        bytes_free(&value);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The end of a stream                                                                         */
/* ------------------------------------------------------------------------------------------ */

CALLBACK(proxy_on_done) uint32_t proxy_on_done(uint32_t ctx) {
    (void)ctx;
    return 1;
}

CALLBACK(proxy_on_log) void proxy_on_log(uint32_t ctx) {
    str cmd = command(ctx);
    misbehave(cmd, "log");
    if (str_eq(cmd, "/t/log/on_log")) {
        bytes code;
        int32_t status = get_property(S("response.code"), &code);
        if (status != OK) {
            say(LOG_INFO, "on_log response.code status=%d", status);
        } else if (code.len == 8 && (code.ptr[0] < '0' || code.ptr[0] > '9')) {
            /* Envoy's form: a little-endian int64 rather than text. */
            uint64_t n = (uint64_t)get_u32(code.ptr) | (uint64_t)get_u32(code.ptr + 4) << 32;
            say(LOG_INFO, "on_log response.code=%llu", (unsigned long long)n);
        } else {
            say(LOG_INFO, "on_log response.code=%.*s", (int)code.len, code.ptr ? code.ptr : "");
        }
        bytes_free(&code);
    }
}

CALLBACK(proxy_on_delete) void proxy_on_delete(uint32_t ctx) {
    struct stream *s = ctx ? stream_find(ctx) : NULL;
    if (s) {
        bytes_free(&s->path);
        s->id = 0;
    }
    for (size_t i = 0; i < MAX_CALLS; i++) /* its calls' answers have nowhere to go */
        if (calls[i].used && calls[i].stream == ctx) calls[i].used = false;
}
