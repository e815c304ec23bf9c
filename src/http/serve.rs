//! Accepting connections and serving the router on them until `stop`.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `listener` until `stop` is cancelled, then lets requests in flight
/// finish.
pub async fn serve(listener: TcpListener, app: Router, stop: CancellationToken) {
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "http server failed");
    }
}
