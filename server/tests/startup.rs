//! Issue 16, start-up as a vLLM user meets it: a hub name (from the Hugging
//! Face cache, or one clear message), a model that fails to load (one message,
//! no "listening"), a vLLM launch script's flags (one warning each, or an
//! error naming the feature), and --threads.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::json;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-llama");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("engine-startup-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the server until it exits (at most a minute): its exit code and output.
fn failed_start(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine-server"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env("ENGINE_DEMO_MODEL", FIXTURE)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status.code(), out)
}

/// Exit 1, no "listening", and exactly one error line, which is returned.
fn one_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let (code, out) = failed_start(args, env);
    assert_eq!(code, Some(1), "{args:?}: {out}");
    assert!(!out.contains("listening"), "{args:?}: {out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {out}");
    errors[0].to_string()
}

/// A Hugging Face cache holding the fixture as `org/tiny` at two commits:
/// refs/main names the first, refs/v2 the second.
fn hf_cache(root: &Path) -> (PathBuf, [&'static str; 2]) {
    let commits = [
        "0123456789abcdef0123456789abcdef01234567",
        "89abcdef0123456789abcdef0123456789abcdef",
    ];
    let repo = root.join("hub/models--org--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    for (commit, branch) in commits.iter().zip(["main", "v2"]) {
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        for entry in std::fs::read_dir(FIXTURE).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
            }
        }
        std::fs::write(repo.join("refs").join(branch), commit).unwrap();
    }
    (repo, commits)
}

#[test]
fn a_hub_name_outside_the_cache_is_one_clear_message() {
    let home = temp_dir("no-cache");
    let home = home.to_str().unwrap();
    let env = [
        ("HOME", home),
        ("HF_HOME", ""),
        ("HF_HUB_CACHE", ""),
        ("XDG_CACHE_HOME", ""),
    ];
    // The seed's own command.
    let e = one_error(&["--model", "meta-llama/Llama-2-7b-hf"], &env);
    assert!(e.contains("not a local directory or file"), "{e}");
    assert!(
        e.contains("does not download from the Hugging Face hub"),
        "{e}"
    );
    assert!(e.contains(&format!("{home}/.cache/huggingface/hub")), "{e}");
    let e = one_error(&["--model", "/no/such/model"], &env);
    assert!(
        e.contains("--model /no/such/model: no such file or directory"),
        "{e}"
    );
}

#[test]
fn a_model_that_fails_to_load_is_one_message() {
    let dir = temp_dir("empty-model");
    let path = dir.to_str().unwrap();
    let e = one_error(&["--model", path], &[]);
    assert!(e.contains("config.json"), "{e}");
    assert!(e.matches(path).count() <= 2, "the path repeats: {e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hub_names_load_from_the_hugging_face_cache_at_a_revision() {
    let root = temp_dir("hf-home");
    let (repo, commits) = hf_cache(&root);
    let hf_home = root.to_str().unwrap();
    let env = [("HF_HOME", hf_home), ("HF_HUB_CACHE", "")];
    for (args, commit) in [
        (vec!["--model", "org/tiny"], commits[0]),
        // `vllm serve MODEL`'s positional model, at a branch and at a commit.
        (vec!["org/tiny", "--revision", "v2"], commits[1]),
        (vec!["org/tiny", "--revision", commits[0]], commits[0]),
    ] {
        let s = Server::start_env(&args, &env);
        let log = s.log.lock().unwrap().join("\n");
        let snapshot = repo.join("snapshots").join(commit);
        assert!(
            log.contains(&format!(
                "found in the Hugging Face cache: {}",
                snapshot.display()
            )),
            "{log}"
        );
        assert_eq!(s.get("/v1/models").json()["data"][0]["id"], "org/tiny");
        let r = s.post(
            "/v1/completions",
            &json!({"model": "org/tiny", "prompt": "Hello", "max_tokens": 2}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let e = one_error(&["--model", "org/tiny", "--revision", "v3"], &env);
    assert!(
        e.contains("revision v3 of it is not in the Hugging Face cache"),
        "{e}"
    );
    // --download-dir is a cache too (vLLM downloads there).
    let elsewhere = [("HF_HOME", "/nonexistent"), ("HF_HUB_CACHE", "")];
    let hub = root.join("hub");
    let s = Server::start_env(
        &[
            "--model",
            "org/tiny",
            "--download-dir",
            hub.to_str().unwrap(),
        ],
        &elsewhere,
    );
    assert_eq!(s.get("/health").status, 200);
    drop(s);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_vllm_launch_script_starts_with_one_warning_per_ignored_flag() {
    let ignored = [
        vec!["--pipeline-parallel-size", "1"],
        vec!["--trust-remote-code"],
        vec!["--swap-space", "4"],
        vec!["--max-seq-len-to-capture", "8192"],
        vec!["--guided-decoding-backend", "outlines"],
        vec!["--enable-chunked-prefill"],
        vec!["--disable-custom-all-reduce"],
    ];
    let mut args: Vec<&str> = vec![
        FIXTURE,
        "--served-model-name",
        "demo",
        "--max_model_len",
        "512",
    ];
    args.extend(ignored.iter().flatten());
    // Implemented here: accepted without a warning.
    args.extend([
        "--tensor-parallel-size",
        "1",
        "--disable-log-stats",
        "--max-log-len",
        "100",
        "--threads",
        "1",
        "--load-format",
        "safetensors",
        "--enforce-eager",
    ]);
    let s = Server::start(&args);
    let log = s.log.lock().unwrap().clone();
    for flag in &ignored {
        let warned = log
            .iter()
            .filter(|l| l.contains("WARN") && l.contains(flag[0]))
            .count();
        assert_eq!(warned, 1, "{flag:?}: {log:#?}");
    }
    assert!(
        log.iter()
            .any(|l| l.contains("device: cpu") && l.contains("CPU threads: 1)")),
        "{log:#?}"
    );
    let r = s.post(
        "/v1/completions",
        &json!({"model": "demo", "prompt": "Hello", "max_tokens": 3, "ignore_eos": true}),
    );
    assert_eq!(r.json()["usage"]["completion_tokens"], 3, "{}", r.text());
    // "listening" only once the model is loaded.
    let loaded = log.iter().position(|l| l.contains("model loaded")).unwrap();
    let listening = log
        .iter()
        .position(|l| l.contains("listening on http://"))
        .unwrap();
    assert!(loaded < listening, "{log:#?}");
}

#[test]
fn flags_that_would_change_results_exit_2_naming_the_feature() {
    for (args, needle) in [
        (
            vec!["--lora-modules", "sql=/tmp/lora"],
            "not supported by this server (LoRA adapters)",
        ),
        (
            vec!["--speculative-model", "[ngram]"],
            "not supported by this server (speculative decoding)",
        ),
        (
            vec!["-pp", "2"],
            "--pipeline-parallel-size 2: pipeline parallelism is not supported",
        ),
        (
            vec!["--quantization", "awq"],
            "awq quantization method is not supported",
        ),
    ] {
        let (code, out) = failed_start(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {out}");
        assert!(out.contains(needle), "{args:?}: {out}");
        assert!(!out.contains("loading"), "{args:?}: {out}");
    }
}

/// `--load-format dummy` serves a directory that has no weights at all.
#[test]
fn dummy_weights_serve_a_directory_with_only_a_config() {
    let dir = temp_dir("dummy-weights");
    for entry in std::fs::read_dir(FIXTURE).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.extension().is_none_or(|e| e != "safetensors") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let model = dir.to_str().unwrap();
    let s = Server::start(&[model, "--load-format", "dummy", "--max-model-len", "128"]);
    let r = s.post(
        "/v1/completions",
        &json!({"model": model, "prompt": "Hello", "max_tokens": 3, "ignore_eos": true}),
    );
    assert_eq!(r.json()["usage"]["completion_tokens"], 3, "{}", r.text());
}
