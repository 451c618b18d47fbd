//! Issue 16: CORS as vLLM's `--allowed-origins`, `--allowed-methods`,
//! `--allowed-headers`, `--allow-credentials`, and `--root-path`.

mod common;

use common::{read_response_from, Response, Server};
use serde_json::json;

const ORIGIN: &str = "http://app.example";

fn preflight(s: &Server, path: &str, origin: &str, headers: &str) -> Response {
    s.request(
        "OPTIONS",
        path,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", headers),
        ],
        b"",
    )
}

fn get_from(s: &Server, path: &str, origin: &str) -> Response {
    s.request("GET", path, &[("Origin", origin)], b"")
}

#[test]
fn by_default_any_origin_may_call_with_any_header() {
    let s = Server::start(&["--api-key", "sk-cors"]);
    // The preflight is answered before the API key is asked for.
    let r = preflight(
        &s,
        "/v1/chat/completions",
        ORIGIN,
        "content-type,authorization",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let methods = r.header("access-control-allow-methods").unwrap();
    for m in ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"] {
        assert!(methods.contains(m), "{methods}");
    }
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type,authorization")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // Answers, errors included, carry the header.
    let r = get_from(&s, "/v1/models", ORIGIN);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let body = json!({"model": "demo", "prompt": "Hi", "max_tokens": 3, "stream": true});
    let r = s.request(
        "POST",
        "/v1/completions",
        &[
            ("Origin", ORIGIN),
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer sk-cors"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn listed_origins_with_credentials_are_echoed_and_others_get_nothing() {
    let s = Server::start(&[
        "--allowed-origins",
        r#"["http://app.example", "https://other.example"]"#,
        "--allowed-methods",
        r#"["GET", "POST"]"#,
        "--allowed-headers",
        r#"["X-Custom"]"#,
        "--allow-credentials",
    ]);
    let r = preflight(&s, "/v1/completions", ORIGIN, "x-custom");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    let allowed = r.header("access-control-allow-headers").unwrap();
    assert!(
        allowed.contains("x-custom") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(r.header("vary").unwrap().contains("origin"));
    let r = get_from(&s, "/v1/models", ORIGIN);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    // An origin not listed gets no permission, on the preflight or after.
    let evil = "http://evil.example";
    assert_eq!(
        preflight(&s, "/v1/completions", evil, "x-custom").header("access-control-allow-origin"),
        None
    );
    let r = get_from(&s, "/v1/models", evil);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn wildcard_origins_with_credentials_echo_the_origin() {
    // A browser refuses `*` with credentials: the origin comes back instead.
    let s = Server::start(&["--allow-credentials"]);
    let r = preflight(&s, "/v1/completions", ORIGIN, "authorization");
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization")
    );
}

#[test]
fn bad_cors_values_stop_the_start_with_the_flags_name() {
    for (flag, value) in [
        ("--allowed-origins", "*"),
        ("--allowed-methods", r#"["GE T"]"#),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine-server"))
            .args(["--port", "0", flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(flag), "{text}");
        assert!(!text.contains("listening"), "{text}");
    }
}

#[test]
fn the_api_answers_under_the_root_path_and_without_it() {
    let s = Server::start(&["--root-path", "/llm/", "--api-key", "sk-root"]);
    let auth = [("Authorization", "Bearer sk-root")];
    for path in ["/llm/v1/models", "/v1/models", "/llm/v1/models/demo"] {
        let r = s.request("GET", path, &auth, b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    // The key is still asked for under the prefix; the open paths stay open.
    s.request("GET", "/llm/v1/models", &[], b"").error(401);
    assert_eq!(s.get("/llm/health").status, 200);
    assert!(s
        .get("/llm/metrics")
        .text()
        .contains("vllm:num_requests_running"));
    let r = s.request(
        "POST",
        "/llm/v1/completions",
        &[auth[0], ("Content-Type", "application/json")],
        json!({"model": "demo", "prompt": "Hi", "max_tokens": 2})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Only a whole path segment is the prefix, and the prefix alone is no route.
    for path in ["/llmv1/models", "/llm", "/other/v1/models"] {
        let message = s.request("GET", path, &auth, b"").error(404);
        assert!(message.contains(path), "{message}");
    }
}

#[test]
fn a_preflight_on_a_kept_alive_connection_leaves_it_usable() {
    let s = Server::start(&[]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    use std::io::Write;
    stream
        .write_all(
            format!(
                "OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\n\
                 Access-Control-Request-Method: GET\r\n\r\n\
                 GET /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut all = Vec::new();
    use std::io::Read;
    stream.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let second = text.rfind("HTTP/1.1 200 OK").unwrap();
    let r = read_response_from(&mut &all[second..]);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.text().contains("\"object\":\"list\""), "{}", r.text());
}
