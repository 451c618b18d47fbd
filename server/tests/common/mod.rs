//! Test harness: starts the real server binary on a free port and talks to it
//! over TCP with a deliberately small HTTP/1.1 client (one request per
//! connection), so tests see exactly the bytes a client would.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Server {
    child: Child,
    pub port: u16,
    /// Every line the server has printed on stdout (its log) so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `engine-server` with `args` (the demo model unless `--model` is
    /// given) and waits until /health answers 200.
    pub fn start(args: &[&str]) -> Server {
        Server::start_env(args, &[])
    }

    /// As [`Server::start`], with these environment variables set.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let server = Server::spawn_env(args, env);
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.get("/health").status != 200 {
            assert!(Instant::now() < deadline, "the model did not load in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Starts `engine-server` and returns once it logged its port (it binds
    /// the port before loading the model), without waiting for the model.
    pub fn spawn(args: &[&str]) -> Server {
        Server::spawn_env(args, &[])
    }

    /// As [`Server::spawn`], with these environment variables set.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        // ENGINE_SERVER_UNDER_TEST runs the tests against another build (an
        // older one, to see a test fail before its fix).
        let binary = std::env::var("ENGINE_SERVER_UNDER_TEST")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_engine-server").to_string());
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env_remove("VLLM_API_KEY")
            // The tests expect the bundled fixture as the default model, not the
            // downloaded demo model.
            .env(
                "ENGINE_DEMO_MODEL",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-llama"),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("engine-server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // "...: port N bound; loading the model ..."
                if let Some(rest) = line.split("): port ").nth(1) {
                    let port = rest
                        .split(' ')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok());
                    let _ = tx.send(port);
                }
                // Keep draining so the server never blocks on a full pipe.
                lines.lock().unwrap().push(line);
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(60)).ok().flatten();
        let Some(port) = port else {
            // No server is left running behind a failed start.
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not log its port");
        };
        Server { child, port, log }
    }

    /// The log lines so far that contain `needle`.
    pub fn logged(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// The first log line containing `needle`, waiting up to `timeout` for it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.logged(needle).into_iter().next() {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut stream = self.connect();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        // The server may answer (413) and close before the body is all sent.
        let _ = stream
            .write_all(head.as_bytes())
            .and_then(|_| stream.write_all(body));
        read_response_from(&mut stream)
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// Starts a POST and returns the open connection after the response head,
    /// to read (or abandon) a stream.
    pub fn post_open(&self, path: &str, body: &Value) -> TcpStream {
        let mut stream = self.connect();
        let body = body.to_string();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        stream
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        stream
    }

    /// A metric's value from /metrics (the first series with that name).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ', ',']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent-event body, `[DONE]` included.
    pub fn events(&self) -> Vec<String> {
        sse_events(&self.text())
    }

    /// The JSON events (everything but `[DONE]`).
    pub fn chunks(&self) -> Vec<Value> {
        let events = self.events();
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{}",
            self.text()
        );
        events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }

    /// The error message of an OpenAI-shaped error body, checking its shape.
    pub fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
        assert_eq!(e["code"], status, "{v}");
        assert!(e.get("param").is_some(), "{v}");
        e["message"].as_str().unwrap().to_string()
    }
}

pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {e:?}"))
                .to_string()
        })
        .collect()
}

/// Reads one response (the connection is then done with).
pub fn read_response_from(stream: &mut impl Read) -> Response {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    Response {
        status,
        headers,
        body,
    }
}
