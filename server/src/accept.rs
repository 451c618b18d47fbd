//! What happens to an admitted connection: the TLS handshake when the server
//! has a certificate, then HTTP/1.1 through the service stack (CORS layer,
//! then the router), watched for graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use tokio_rustls::TlsAcceptor;
use tower::Layer;
use tower_http::cors::{Cors, CorsLayer};

use crate::conn::Lingering;
use crate::http;
use crate::response::Body;
use crate::state::AppState;

/// The router as a tower service, so tower-http layers wrap it.
#[derive(Clone)]
pub struct Router(Arc<AppState>);

type Handled = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl tower::Service<Request<Incoming>> for Router {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Handled;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Handled {
        Box::pin(http::handle(self.0.clone(), req))
    }
}

type Service = TowerToHyperService<Cors<Router>>;

/// Everything a connection is served with.
pub struct Front {
    http: http1::Builder,
    tls: Option<TlsAcceptor>,
    /// Longest a TLS handshake may take (the time a request head may take).
    handshake_timeout: Duration,
    service: Service,
}

impl Front {
    /// `head_timeout`: how long a connection may take to send a request head,
    /// counted from its opening or its previous response.
    pub fn new(
        state: Arc<AppState>,
        cors: CorsLayer,
        tls: Option<TlsAcceptor>,
        head_timeout: Duration,
    ) -> Front {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(head_timeout);
        Front {
            http,
            tls,
            handshake_timeout: head_timeout,
            service: TowerToHyperService::new(cors.layer(Router(state))),
        }
    }

    /// Serves one connection on its own task.
    pub fn serve(&self, stream: Lingering, watcher: Watcher) {
        let http = self.http.clone();
        let service = self.service.clone();
        let Some(acceptor) = self.tls.clone() else {
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(watcher.watch(conn));
            return;
        };
        let timeout = self.handshake_timeout;
        tokio::spawn(async move {
            // Failures are the client's (a plain-HTTP request, an unknown or
            // missing client certificate): no more than a debug line.
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let conn = http.serve_connection(TokioIo::new(tls), service);
                    let _ = watcher.watch(conn).await;
                }
                Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                Err(_) => tracing::debug!("TLS handshake not done within {timeout:?}"),
            }
        });
    }
}
