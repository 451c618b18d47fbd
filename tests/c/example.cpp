// The C ABI from C++17: RAII owners for the handles, a blocking generate()
// built on the streaming callback, exceptions for error statuses. Compiled with
// g++ -std=c++17 -Wall -Wextra -pedantic -Werror by tests/c_abi.rs and run on
// the fixture model:  example MODEL_DIR

#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine.h"

namespace {

[[noreturn]] void throw_last_error(const char *what, engine_status status) {
    std::string message(engine_last_error(nullptr, 0) + 1, '\0');
    message.resize(engine_last_error(&message[0], message.size()));
    throw std::runtime_error(std::string(what) + ": " + engine_status_name(status) + ": " +
                             message);
}

void check(const char *what, engine_status status) {
    if (status != ENGINE_OK) throw_last_error(what, status);
}

struct EngineDeleter {
    void operator()(engine_t *e) const { engine_free(e); }
};
struct OptionsDeleter {
    void operator()(engine_options_t *o) const { engine_options_free(o); }
};
using Engine = std::unique_ptr<engine_t, EngineDeleter>;
using Options = std::unique_ptr<engine_options_t, OptionsDeleter>;

Engine load(const std::string &model_dir) {
    engine_options_t *raw = nullptr;
    check("engine_options_new", engine_options_new(&raw));
    Options options(raw);
    check("model", engine_options_set(options.get(), "model", model_dir.c_str()));
    check("dtype", engine_options_set(options.get(), "dtype", "float32"));
    engine_t *engine = nullptr;
    check("engine_new", engine_new(options.get(), &engine));
    return Engine(engine);
}

// One request's output, filled on the engine thread.
struct Completion {
    std::mutex lock;
    std::condition_variable done_cv;
    std::string text;
    std::vector<uint32_t> tokens;
    engine_finish_reason finish = ENGINE_FINISH_NONE;
    bool done = false;
};

}  // namespace

// The callback has C linkage, as the header's engine_event_fn.
extern "C" void on_event(void *user_data, const engine_event_t *ev) {
    auto *c = static_cast<Completion *>(user_data);
    std::lock_guard<std::mutex> guard(c->lock);
    if (ev->kind == ENGINE_EVENT_DELTA) {
        c->text.append(ev->text, ev->text_len);
        c->tokens.insert(c->tokens.end(), ev->token_ids, ev->token_ids + ev->num_tokens);
    } else {
        c->finish = ev->finish_reason;
        c->done = true;
        c->done_cv.notify_all();
    }
}


namespace {

Completion &generate(const Engine &engine, const std::string &request, Completion &out) {
    uint64_t id = 0;
    check("engine_submit",
          engine_submit(engine.get(), request.data(), request.size(), on_event, &out, &id));
    std::unique_lock<std::mutex> guard(out.lock);
    out.done_cv.wait(guard, [&] { return out.done; });
    return out;
}

std::vector<uint32_t> tokenize(const Engine &engine, const std::string &text) {
    size_t n = 0;
    engine_status s = engine_tokenize(engine.get(), text.data(), text.size(), true, nullptr, 0, &n);
    if (s != ENGINE_ERR_BUFFER_TOO_SMALL && s != ENGINE_OK) throw_last_error("tokenize", s);
    std::vector<uint32_t> ids(n);
    check("tokenize",
          engine_tokenize(engine.get(), text.data(), text.size(), true, ids.data(), n, &n));
    return ids;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
        return 2;
    }
    try {
        Engine engine = load(argv[1]);
        engine_model_info_t info{};
        info.struct_size = sizeof info;
        check("engine_model_info_get", engine_model_info_get(engine.get(), &info));
        std::printf("model %s, vocabulary %llu\n", info.served_model_name,
                    static_cast<unsigned long long>(info.vocab_size));

        std::vector<uint32_t> prompt = tokenize(engine, "Hello, my name is");
        std::string request = "{\"prompt\": [";
        for (size_t i = 0; i < prompt.size(); i++) {
            request += (i ? ", " : "") + std::to_string(prompt[i]);
        }
        request += "], \"max_tokens\": 5, \"temperature\": 0, \"ignore_eos\": true}";
        Completion completion;
        generate(engine, request, completion);
        std::printf("%zu tokens: \"%s\"\n", completion.tokens.size(), completion.text.c_str());
        if (completion.tokens.size() != 5 || completion.finish != ENGINE_FINISH_LENGTH) {
            std::fprintf(stderr, "FAIL: expected 5 tokens and finish reason length\n");
            return 1;
        }
        try {
            check("engine_submit", engine_submit(engine.get(), "{}", 2, on_event, nullptr, nullptr));
            std::fprintf(stderr, "FAIL: an empty request was accepted\n");
            return 1;
        } catch (const std::runtime_error &e) {
            std::printf("rejected as expected: %s\n", e.what());
        }
        check("engine_shutdown", engine_shutdown(engine.get(), true));
    } catch (const std::exception &e) {
        std::fprintf(stderr, "FAIL: %s\n", e.what());
        return 1;
    }
    std::printf("OK\n");
    return 0;
}
