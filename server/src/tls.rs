//! HTTPS as vLLM's uvicorn serves it (`--ssl-keyfile`, `--ssl-certfile`,
//! `--ssl-ca-certs`, `--ssl-cert-reqs`), with rustls on the ring backend (it
//! builds from a small C and assembly core with no system dependency).
//!
//! `--ssl-cert-reqs` is Python's `ssl.VerifyMode`: 0 asks for no client
//! certificate (the CA file is then unused, as in uvicorn), 1 checks one when
//! the client sends it, 2 requires one. 1 and 2 need `--ssl-ca-certs`.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The four flags.
pub struct TlsFiles<'a> {
    pub keyfile: &'a Path,
    pub certfile: &'a Path,
    pub ca_certs: Option<&'a Path>,
    pub cert_reqs: u8,
}

/// The acceptor, or a message naming the file and what is wrong with it.
pub fn acceptor(f: &TlsFiles) -> Result<TlsAcceptor, String> {
    // rustls marks ring's provider deprecated for lacking post-quantum key
    // exchange (X25519MLKEM768, aws-lc-rs only); ring is kept for its build
    // (seconds, with no cmake), and X25519, P-256 and P-384 stay offered.
    #[allow(deprecated)]
    let provider = Arc::new(ring::default_provider());
    let certs = read_certs(f.certfile, "--ssl-certfile")?;
    let key = PrivateKeyDer::from_pem_file(f.keyfile).map_err(|e| {
        format!(
            "--ssl-keyfile {}: no private key read ({e})",
            f.keyfile.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match (f.cert_reqs, f.ca_certs) {
        (0, ca) => {
            if let Some(ca) = ca {
                tracing::warn!(
                    "--ssl-ca-certs {} is unused: client certificates are checked only with \
                     --ssl-cert-reqs 1 (optional) or 2 (required), as in uvicorn",
                    ca.display()
                );
            }
            builder.with_no_client_auth()
        }
        (reqs, None) => {
            return Err(format!(
                "--ssl-cert-reqs {reqs} checks client certificates: give the CA certificates \
                 they are checked against with --ssl-ca-certs"
            ))
        }
        (reqs, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "--ssl-ca-certs")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("--ssl-ca-certs {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if reqs == 1 {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("--ssl-ca-certs {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "--ssl-certfile {} and --ssl-keyfile {}: {e}",
            f.certfile.display(),
            f.keyfile.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Every certificate of a PEM file; none is an error.
fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{flag} {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    if certs.is_empty() {
        return Err(fail(&"no PEM certificate in the file"));
    }
    Ok(certs)
}
