//! Accepting connections and serving the router on them until `stop`, with the limits
//! that keep a flood of connections from starving honest clients: at most
//! [`Limits::max_connections`] open at once (past it, new ones wait in the kernel's
//! backlog), and a connection that does not deliver a request's headers within
//! [`Limits::header_read_timeout`] — a slow sender, or an idle keep-alive connection —
//! is closed. With TLS the handshake gets the same time, and each request carries how
//! its client identified itself ([`ClientCert`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::tls::{self, ClientCert, Tls};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// From the moment a connection waits for a request until its headers are in (and,
    /// with TLS, for the handshake).
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` is cancelled, then lets requests in flight
/// finish (each connection closes after its current request).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    limits: Limits,
    tls: Option<Tls>,
) {
    let acceptor = tls.as_ref().map(Tls::acceptor);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut refused_while_full = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !refused_while_full {
                    tracing::warn!(
                        max = limits.max_connections,
                        "connection limit reached: new connections wait until one closes"
                    );
                    refused_while_full = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let (stream, remote) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        refused_while_full = false;
        let _ = stream.set_nodelay(true);
        let (app, stop, acceptor) = (app.clone(), stop.clone(), acceptor.clone());
        connections.spawn(async move {
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                return serve_connection(stream, remote, None, app, limits, stop).await;
            };
            match tokio::time::timeout(limits.header_read_timeout, tls::accept(&acceptor, stream))
                .await
            {
                Ok(Ok((stream, cert))) => {
                    serve_connection(stream, remote, Some(cert), app, limits, stop).await
                }
                Ok(Err(error)) => tracing::debug!(%remote, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        });
    }
    connections.close();
    connections.wait().await;
}

async fn serve_connection<S>(
    stream: S,
    remote: SocketAddr,
    cert: Option<ClientCert>,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app.map_request(
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            if let Some(cert) = cert {
                request.extensions_mut().insert(cert);
            }
            request
        },
    ));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%remote, %error, "connection ended with an error");
    }
}
