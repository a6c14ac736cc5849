//! The HTTP/1 accept loop, in place of `axum::serve`, for the limits it cannot set:
//! - a request head must arrive within `server.request_timeout_ms` of the connection being
//!   ready for one — on a new connection and between keep-alive requests alike. A slowloris
//!   client (a head sent a byte at a time) and an idle keep-alive connection are closed after
//!   it, so neither holds a socket forever;
//! - a failed accept (out of file descriptors under a connection flood) is logged and retried
//!   after a pause instead of spinning;
//! - a connection's read buffer is bounded ([`READ_BUFFER_MAX`], or a little more than
//!   `server.max_header_bytes` when that is larger), so many clients sending large bodies at
//!   once cost little beyond the bodies being handled. The buffer bounds a request head too:
//!   hyper answers a head that overflows it with its own 431 (no body), one that fits reaches
//!   the guard, which checks `server.max_header_bytes` exactly;
//! - graceful shutdown: stop accepting, let every open connection finish its request in
//!   flight and close (the caller bounds the wait with `server.shutdown_grace_ms`).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// Largest read buffer of a connection (hyper's default is ~400 KiB): bodies stream through it,
/// so with thousands of connections sending at once this is most of their memory. It bounds a
/// request head as well.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// Room in the read buffer beyond `server.max_header_bytes` for the request line and a little
/// more, so that a head just past the limit is answered by the guard (431 in the JSON shape).
const HEAD_SLACK: usize = 16 * 1024;

/// Pause after a failed accept (EMFILE, ENFILE, ECONNABORTED…), so a flood cannot spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `service` on `listener` until `stop` is cancelled, then waits for open connections
/// to finish their request in flight.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    service: S,
    head_timeout: Duration,
    max_header_bytes: usize,
    stop: CancellationToken,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    let read_buffer = READ_BUFFER_MAX.max(max_header_bytes.saturating_add(HEAD_SLACK));
    http.timer(TokioTimer::new()).header_read_timeout(head_timeout).keep_alive(true).max_buf_size(read_buffer);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Responses are small and written whole: Nagle's algorithm would only add latency.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
        let service = service.clone().map_request(|request: hyper::Request<Incoming>| request.map(Body::new));
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
