//! Issue 16: HTTPS with `--ssl-keyfile`/`--ssl-certfile`, and client
//! certificates with `--ssl-ca-certs` and `--ssl-cert-reqs`, against
//! certificates made here (rcgen) and a rustls client that trusts them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{read_response_from, Response, Server};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

/// A leaf certificate and its key.
struct Leaf {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn leaf(ca: &Ca, names: &[&str]) -> Leaf {
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A fresh folder for this test's PEM files.
fn folder(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("engine-tls-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn client(trusted: &Ca, identity: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.der.clone()).unwrap();
    #[allow(deprecated)] // ring, as the server uses (see server/src/tls.rs)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some(l) => builder
            .with_client_auth_cert(vec![l.cert.clone()], l.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// One request over TLS; `Err` when the handshake or the exchange fails.
fn https(
    s: &Server,
    config: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Response, String> {
    let tcp = TcpStream::connect(("127.0.0.1", s.port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // The server's close_notify ends the stream; a reset after it is no error.
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.to_string()),
    }
    if raw.is_empty() {
        return Err("no response".into());
    }
    Ok(read_response_from(&mut raw.as_slice()))
}

fn wait_loaded(s: &Server, config: &Arc<ClientConfig>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while https(s, config, "GET", "/health", "").map(|r| r.status) != Ok(200) {
        assert!(Instant::now() < deadline, "the model did not load in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn https_serves_the_api_to_a_client_that_trusts_the_certificate() {
    let dir = folder("serve");
    let ca = ca("test CA");
    let server = leaf(&ca, &["localhost"]);
    let cert = write(&dir, "cert.pem", &server.cert_pem);
    let key = write(&dir, "key.pem", &server.key_pem);
    let s = Server::spawn(&["--ssl-keyfile", &key, "--ssl-certfile", &cert]);
    let trusting = client(&ca, None);
    wait_loaded(&s, &trusting);
    assert!(s
        .wait_for_log("listening on https://", std::time::Duration::from_secs(5))
        .is_some());
    let body = r#"{"model": "demo", "prompt": "Hello", "max_tokens": 4, "stream": true}"#;
    let r = https(&s, &trusting, "POST", "/v1/completions", body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
    // A client that trusts another CA refuses the server; plain HTTP gets no answer.
    let stranger = client(&self::ca("other CA"), None);
    let e = https(&s, &stranger, "GET", "/health", "").unwrap_err();
    assert!(e.contains("certificate") || e.contains("Unknown"), "{e}");
    let mut plain = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // The server still serves after those failures.
    assert_eq!(
        https(&s, &trusting, "GET", "/v1/models", "")
            .unwrap()
            .status,
        200
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn client_certificates_are_checked_as_ssl_cert_reqs_says() {
    let dir = folder("mtls");
    let ca = ca("test CA");
    let server = leaf(&ca, &["localhost"]);
    let known = leaf(&ca, &["client"]);
    let other_ca = self::ca("other CA");
    let unknown = leaf(&other_ca, &["client"]);
    let cert = write(&dir, "cert.pem", &server.cert_pem);
    let key = write(&dir, "key.pem", &server.key_pem);
    let cas = write(&dir, "ca.pem", &ca.pem);
    let anonymous = client(&ca, None);
    let with_known = client(&ca, Some(&known));
    let with_unknown = client(&ca, Some(&unknown));
    // 2: required.
    let s = Server::spawn(&[
        "--ssl-keyfile",
        &key,
        "--ssl-certfile",
        &cert,
        "--ssl-ca-certs",
        &cas,
        "--ssl-cert-reqs",
        "2",
    ]);
    wait_loaded(&s, &with_known);
    assert!(https(&s, &anonymous, "GET", "/health", "").is_err());
    assert!(https(&s, &with_unknown, "GET", "/health", "").is_err());
    drop(s);
    // 1: optional, but a certificate sent must check.
    let s = Server::spawn(&[
        "--ssl-keyfile",
        &key,
        "--ssl-certfile",
        &cert,
        "--ssl-ca-certs",
        &cas,
        "--ssl-cert-reqs",
        "1",
    ]);
    wait_loaded(&s, &anonymous);
    assert_eq!(
        https(&s, &with_known, "GET", "/health", "").unwrap().status,
        200
    );
    assert!(https(&s, &with_unknown, "GET", "/health", "").is_err());
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unusable_tls_settings_stop_the_start_with_a_message() {
    let dir = folder("bad");
    let ca = ca("test CA");
    let server = leaf(&ca, &["localhost"]);
    let cert = write(&dir, "cert.pem", &server.cert_pem);
    let key = write(&dir, "key.pem", &server.key_pem);
    let other_key = write(&dir, "other.pem", &leaf(&ca, &["x"]).key_pem);
    let missing = dir.join("missing.pem").display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--ssl-keyfile", &missing, "--ssl-certfile", &cert],
            "--ssl-keyfile",
        ),
        (
            &["--ssl-keyfile", &key, "--ssl-certfile", &key],
            "--ssl-certfile",
        ),
        (
            &["--ssl-keyfile", &other_key, "--ssl-certfile", &cert],
            "--ssl-certfile",
        ),
        (
            &[
                "--ssl-keyfile",
                &key,
                "--ssl-certfile",
                &cert,
                "--ssl-cert-reqs",
                "2",
            ],
            "--ssl-ca-certs",
        ),
    ];
    for (args, named) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine-server"))
            .args(["--port", "0"])
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(text.contains(named), "{args:?}: {text}");
        assert!(!text.contains("listening"), "{args:?}: {text}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
