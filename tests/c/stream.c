/*
 * The C ABI from C: load a model, stream two requests from two threads at once,
 * abort one, check the other's text, exercise model info, tokenization, the chat
 * template, statistics and shutdown, and free everything.
 *
 * Run by tests/c_abi.rs (also under valgrind):
 *   stream MODEL_DIR REQUEST_JSON EXPECTED_TEXT_FILE
 * REQUEST_JSON is the request to keep (greedy, so its text is known);
 * EXPECTED_TEXT_FILE holds the text the Rust API generates for it.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

static void fail_status(const char *what, engine_status status) {
    char message[2048];
    engine_last_error(message, sizeof message);
    fprintf(stderr, "FAIL: %s -> %s: %s\n", what, engine_status_name(status), message);
    exit(1);
}

#define CHECK(call)                                                                    \
    do {                                                                               \
        engine_status status_ = (call);                                                \
        if (status_ != ENGINE_OK) fail_status(#call, status_);                         \
    } while (0)

#define EXPECT(cond)                                                                   \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "FAIL: %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* One request's output, filled by the callback on the engine thread. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    char *text; /* the deltas, concatenated */
    size_t text_len;
    char *final_text;
    size_t final_len;
    int deltas;
    int done;
    engine_finish_reason finish;
    uint64_t completion_tokens;
    uint64_t request_id;
} stream_t;

static void stream_init(stream_t *s) {
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->changed, NULL);
}

static void stream_destroy(stream_t *s) {
    free(s->text);
    free(s->final_text);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->changed);
}

static char *copy_bytes(const char *p, size_t n) {
    char *c = malloc(n + 1);
    EXPECT(c != NULL);
    memcpy(c, p, n);
    c[n] = '\0';
    return c;
}

/* Copies what it needs and returns: the event is valid only during the call. */
static void on_event(void *user_data, const engine_event_t *ev) {
    stream_t *s = user_data;
    EXPECT(ev->struct_size >= sizeof(engine_event_t));
    EXPECT(ENGINE_HAS_FIELD(ev, engine_event_t, json));
    EXPECT(ev->json != NULL && ev->json_len > 0 && ev->json[0] == '{');
    EXPECT(ev->json[ev->json_len] == '\0' && ev->text[ev->text_len] == '\0');
    pthread_mutex_lock(&s->lock);
    EXPECT(!s->done); /* nothing after the final event */
    EXPECT(s->request_id == 0 || s->request_id == ev->request_id);
    if (ev->kind == ENGINE_EVENT_DELTA) {
        EXPECT(ev->num_tokens > 0 && ev->token_ids != NULL && ev->logprobs != NULL);
        EXPECT(ev->logprobs[0] <= 0.0f);
        char *grown = realloc(s->text, s->text_len + ev->text_len + 1);
        EXPECT(grown != NULL);
        s->text = grown;
        memcpy(s->text + s->text_len, ev->text, ev->text_len);
        s->text_len += ev->text_len;
        s->text[s->text_len] = '\0';
        s->deltas++;
        s->completion_tokens = ev->completion_tokens;
    } else {
        EXPECT(ev->kind == ENGINE_EVENT_FINAL);
        EXPECT(strstr(ev->json, "\"results\"") != NULL);
        s->final_text = copy_bytes(ev->text, ev->text_len);
        s->final_len = ev->text_len;
        s->finish = ev->finish_reason;
        s->done = 1;
    }
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}

static engine_t *engine;
static const char *keep_request;

/* Waits until `pred` holds for the stream (under its lock). */
static void wait_for(stream_t *s, int (*pred)(const stream_t *)) {
    pthread_mutex_lock(&s->lock);
    while (!pred(s)) pthread_cond_wait(&s->changed, &s->lock);
    pthread_mutex_unlock(&s->lock);
}

static int is_done(const stream_t *s) { return s->done; }
static int has_delta(const stream_t *s) { return s->deltas > 0 || s->done; }

static void submit(stream_t *s, const char *json) {
    uint64_t id = 0;
    /* Lock so the callback, which may run before engine_submit returns, sees the id. */
    pthread_mutex_lock(&s->lock);
    CHECK(engine_submit(engine, json, strlen(json), on_event, s, &id));
    EXPECT(id != 0);
    s->request_id = id;
    pthread_mutex_unlock(&s->lock);
}

static void *keep_thread(void *arg) {
    stream_t *s = arg;
    submit(s, keep_request);
    wait_for(s, is_done);
    return NULL;
}

static void *abort_thread(void *arg) {
    stream_t *s = arg;
    submit(s, "{\"prompt\": \"Once upon a time\", \"max_tokens\": 1000, \"ignore_eos\": true,"
              " \"temperature\": 0.8, \"seed\": 7}");
    wait_for(s, has_delta);
    CHECK(engine_abort(engine, s->request_id));
    wait_for(s, is_done);
    EXPECT(s->finish == ENGINE_FINISH_ABORT);
    /* Finished now: a second abort names an unknown request. */
    EXPECT(engine_abort(engine, s->request_id) == ENGINE_ERR_UNKNOWN_REQUEST);
    return NULL;
}

static uint64_t progress_calls, progress_done, progress_total;

static void on_progress(void *user_data, uint64_t done, uint64_t total) {
    EXPECT(user_data == &progress_calls);
    progress_calls++;
    progress_done = done;
    progress_total = total;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    EXPECT(f != NULL);
    char *buf = NULL;
    size_t n = 0;
    char chunk[4096];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        char *grown = realloc(buf, n + got + 1);
        EXPECT(grown != NULL);
        buf = grown;
        memcpy(buf + n, chunk, got);
        n += got;
    }
    fclose(f);
    if (buf == NULL) buf = calloc(1, 1);
    EXPECT(buf != NULL);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void check_tokenizer(void) {
    const char *text = "Hello, world";
    size_t n = 0;
    EXPECT(engine_tokenize(engine, text, strlen(text), true, NULL, 0, &n) ==
           ENGINE_ERR_BUFFER_TOO_SMALL);
    EXPECT(n > 1);
    uint32_t *ids = malloc(n * sizeof *ids);
    EXPECT(ids != NULL);
    size_t m = 0;
    CHECK(engine_tokenize(engine, text, strlen(text), true, ids, n, &m));
    EXPECT(m == n);
    char buf[256];
    size_t len = 0;
    CHECK(engine_detokenize(engine, ids, n, true, buf, sizeof buf, &len));
    EXPECT(len == strlen(text) && strcmp(buf, text) == 0);
    free(ids);

    const char *chat = "[{\"role\": \"user\", \"content\": \"Hi there\"}]";
    size_t prompt_len = 0;
    EXPECT(engine_apply_chat_template(engine, chat, strlen(chat), true, NULL, 0, &prompt_len) ==
           ENGINE_ERR_BUFFER_TOO_SMALL);
    char *prompt = malloc(prompt_len + 1);
    EXPECT(prompt != NULL);
    CHECK(engine_apply_chat_template(engine, chat, strlen(chat), true, prompt, prompt_len + 1,
                                     &prompt_len));
    EXPECT(strstr(prompt, "Hi there") != NULL);
    free(prompt);
}

static void check_model_info(const char *model_dir) {
    engine_model_info_t info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK(engine_model_info_get(engine, &info));
    EXPECT(info.struct_size == sizeof info);
    EXPECT(strcmp(info.served_model_name, model_dir) == 0);
    EXPECT(info.served_model_name_len == strlen(model_dir));
    EXPECT(strcmp(info.architecture, "LlamaForCausalLM") == 0);
    EXPECT(strcmp(info.dtype, "float32") == 0);
    EXPECT(info.vocab_size == 3000 && info.max_model_len == 2048);
    EXPECT(info.has_tokenizer && info.has_chat_template);
    EXPECT(info.bos_token_id >= 0 && info.num_eos_token_ids >= 1);
    EXPECT(info.eos_token_ids != NULL);
    EXPECT(strcmp(info.device, "cpu (auto: this build has no CUDA backend; CPU threads: 2)") == 0);
    EXPECT(info.device_len == strlen(info.device));

    /* A caller built against an older, smaller struct gets only what it knows. */
    engine_model_info_t old;
    memset(&old, 0xAB, sizeof old);
    old.struct_size = (uint32_t)offsetof(engine_model_info_t, architecture);
    CHECK(engine_model_info_get(engine, &old));
    EXPECT(old.struct_size == offsetof(engine_model_info_t, architecture));
    EXPECT(old.served_model_name == info.served_model_name);
    EXPECT(!ENGINE_HAS_FIELD(&old, engine_model_info_t, architecture));
    EXPECT(old.architecture_len == (size_t)0xABABABABABABABABull); /* untouched */
}

static void check_bad_input(void) {
    uint64_t id = 0;
    const char *bad_json = "{\"prompt\": \"x\",";
    const char *unknown = "{\"prompt\": \"x\", \"colour\": \"blue\"}";
    const char *bad_temp = "{\"prompt\": \"x\", \"temperature\": -1}";
    char message[512];
    EXPECT(engine_submit(NULL, bad_json, 1, on_event, NULL, &id) == ENGINE_ERR_NULL);
    EXPECT(engine_submit(engine, NULL, 0, on_event, NULL, &id) == ENGINE_ERR_NULL);
    EXPECT(engine_submit(engine, unknown, strlen(unknown), NULL, NULL, &id) == ENGINE_ERR_NULL);
    EXPECT(engine_submit(engine, bad_json, strlen(bad_json), on_event, NULL, &id) ==
           ENGINE_ERR_JSON);
    EXPECT(engine_submit(engine, unknown, strlen(unknown), on_event, NULL, &id) ==
           ENGINE_ERR_JSON);
    engine_last_error(message, sizeof message);
    EXPECT(strstr(message, "unknown field \"colour\"") != NULL);
    EXPECT(engine_submit(engine, bad_temp, strlen(bad_temp), on_event, NULL, &id) ==
           ENGINE_ERR_INVALID_ARGUMENT);
    engine_last_error(message, sizeof message);
    EXPECT(strstr(message, "temperature must be non-negative, got -1") != NULL);
    EXPECT(engine_abort(engine, 999999) == ENGINE_ERR_UNKNOWN_REQUEST);
    EXPECT(engine_stats_get(engine, NULL) == ENGINE_ERR_NULL);
    EXPECT(id == 0); /* failures leave the id alone */
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL_DIR REQUEST_JSON EXPECTED_TEXT_FILE\n", argv[0]);
        return 2;
    }
    const char *model_dir = argv[1];
    keep_request = argv[2];
    size_t expected_len = 0;
    char *expected = read_file(argv[3], &expected_len);

    EXPECT(engine_abi_version() >= ENGINE_ABI_VERSION);
    EXPECT(strcmp(engine_status_name(ENGINE_ERR_JSON), "ENGINE_ERR_JSON") == 0);

    engine_options_t *options = NULL;
    CHECK(engine_options_new(&options));
    CHECK(engine_options_set(options, "model", model_dir));
    CHECK(engine_options_set(options, "dtype", "float32"));
    CHECK(engine_options_set(options, "max_num_seqs", "8"));
    CHECK(engine_options_set(options, "threads", "2"));
    EXPECT(engine_options_set(options, "threads", "0") == ENGINE_ERR_INVALID_ARGUMENT);
    CHECK(engine_options_set_progress(options, on_progress, &progress_calls));
    EXPECT(engine_options_set(options, "colour", "blue") == ENGINE_ERR_INVALID_ARGUMENT);
    EXPECT(engine_options_set(options, "device", "cuda") == ENGINE_ERR_UNSUPPORTED);
    CHECK(engine_options_set(options, "device", "auto")); /* the CPU in this build */
    CHECK(engine_new(options, &engine));
    engine_options_free(options);
    EXPECT(progress_calls >= 2 && progress_done == progress_total && progress_total > 0);

    check_model_info(model_dir);
    check_tokenizer();
    check_bad_input();

    stream_t keep, aborted;
    stream_init(&keep);
    stream_init(&aborted);
    pthread_t keep_tid, abort_tid;
    EXPECT(pthread_create(&keep_tid, NULL, keep_thread, &keep) == 0);
    EXPECT(pthread_create(&abort_tid, NULL, abort_thread, &aborted) == 0);
    EXPECT(pthread_join(keep_tid, NULL) == 0);
    EXPECT(pthread_join(abort_tid, NULL) == 0);

    if (keep.text_len != expected_len || memcmp(keep.text, expected, expected_len) != 0) {
        fprintf(stderr, "FAIL: streamed text differs\n  got:      \"%s\"\n  expected: \"%s\"\n",
                keep.text ? keep.text : "", expected);
        return 1;
    }
    EXPECT(keep.final_len == expected_len && memcmp(keep.final_text, expected, expected_len) == 0);
    EXPECT(keep.finish == ENGINE_FINISH_LENGTH);
    EXPECT(keep.deltas >= 1 && keep.completion_tokens == (uint64_t)keep.deltas);

    engine_stats_t stats;
    memset(&stats, 0, sizeof stats);
    stats.struct_size = sizeof stats;
    CHECK(engine_stats_get(engine, &stats));
    EXPECT(stats.struct_size == sizeof stats);
    if (stats.finished_abort != 1 || stats.finished_length != 1) {
        fprintf(stderr, "FAIL: finished: %llu abort, %llu length, %llu stop\n",
                (unsigned long long)stats.finished_abort, (unsigned long long)stats.finished_length,
                (unsigned long long)stats.finished_stop);
        return 1;
    }
    EXPECT(stats.generation_tokens >= keep.completion_tokens);
    EXPECT(stats.num_requests == 0 && stats.kv_blocks_total > 0);
    EXPECT(stats.prefix_cache_hit_rate < 0); /* prefix caching is off */

    /* Drain: the request submitted last runs to completion before shutdown returns. */
    stream_t last;
    stream_init(&last);
    submit(&last, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 3}");
    CHECK(engine_shutdown(engine, true));
    EXPECT(last.done && last.finish != ENGINE_FINISH_ABORT);
    uint64_t id = 0;
    EXPECT(engine_submit(engine, keep_request, strlen(keep_request), on_event, &last, &id) ==
           ENGINE_ERR_STOPPED);
    CHECK(engine_shutdown(engine, false)); /* again: nothing more to do */

    engine_free(engine);
    engine_free(NULL);
    engine_options_free(NULL);
    stream_destroy(&keep);
    stream_destroy(&aborted);
    stream_destroy(&last);
    free(expected);
    printf("OK\n");
    return 0;
}
