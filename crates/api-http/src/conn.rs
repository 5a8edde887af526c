//! The connection layer under the routes: accepts TCP (and TLS) connections and serves HTTP/1.1
//! on each with the defences a public endpoint needs.
//!
//! * **Open connections are capped** ([`HttpSettings::max_connections`]). A connection beyond the
//!   cap is answered a canned `503` with `Retry-After` and closed at once (over TLS it is just
//!   closed, since no handshake was made), so a flood of new connections never starves the ones
//!   already open.
//! * **A request head must arrive in time** ([`HttpSettings::header_read_timeout_secs`]): counted
//!   from the moment a connection is accepted, or from the first byte of a later request on a
//!   kept-alive connection. A client that sends part of a head and then nothing (slowloris) is
//!   dropped. A TLS handshake gets the same time.
//! * **An idle kept-alive connection is closed** after [`HttpSettings::idle_timeout_secs`] without
//!   a new request. A request in progress (a long-poll waiting for orders) is never idle.
//!
//! Shutdown: stop accepting, let every connection finish the request it is serving (the open
//! long-polls are ended by the caller), close idle ones.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::{HttpSettings, metric};

/// File descriptors kept for everything but client connections (the listener, storage
/// connections, log and database files) when the connection cap is derived from the open-file
/// limit.
pub const RESERVED_FDS: u64 = 512;

/// The process's open-file limit as the binary found and raised it at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit in force (after raising it to the hard limit where allowed).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit (an agent's long-poll holds a descriptor,
/// so a fleet needs many) and answers both.
///
/// # Errors
/// The error of reading the limit; failing to raise it is not an error (the limit found is
/// answered).
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft < hard && rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).is_ok() {
        return Ok(FdLimit { soft: hard, hard });
    }
    Ok(FdLimit { soft, hard })
}

/// The open-file limit in force.
///
/// # Errors
/// The error of reading it.
pub fn fd_limit() -> io::Result<FdLimit> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    Ok(FdLimit { soft, hard })
}

impl HttpSettings {
    /// The cap on open connections under `limit`: [`HttpSettings::max_connections`], or when it
    /// is 0 as many as the limit allows after [`RESERVED_FDS`].
    ///
    /// # Errors
    /// A message naming `http.max_connections` when the configured cap does not fit under the
    /// open-file limit, or `http.max_open_polls` when more long-polls are allowed than
    /// connections.
    pub fn connection_cap(&self, limit: FdLimit) -> Result<usize, String> {
        let allowed = limit.soft.saturating_sub(RESERVED_FDS);
        if self.max_connections == 0 {
            return Ok(usize::try_from(allowed).unwrap_or(usize::MAX).max(1));
        }
        let cap = self.max_connections as u64;
        if cap > allowed {
            return Err(format!(
                "http.max_connections = {cap} does not fit under the open-file limit \
                 (RLIMIT_NOFILE soft {}, hard {}; {RESERVED_FDS} descriptors are kept for \
                 storage and files): lower http.max_connections to at most {allowed}, set it to \
                 0 to derive it from the limit, or raise the limit (ulimit -n, systemd \
                 LimitNOFILE)",
                limit.soft, limit.hard
            ));
        }
        if self.max_open_polls > self.max_connections {
            return Err(format!(
                "http.max_open_polls = {} exceeds http.max_connections = {}: every long-poll \
                 holds a connection; lower http.max_open_polls or raise http.max_connections",
                self.max_open_polls, self.max_connections
            ));
        }
        Ok(self.max_connections)
    }
}

/// What the accept loop needs, derived once from the settings.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) retry_after_secs: u64,
}

impl Limits {
    pub(crate) fn new(settings: &HttpSettings, max_connections: usize) -> Self {
        Self {
            max_connections: max_connections.clamp(1, Semaphore::MAX_PERMITS),
            header_read_timeout: Duration::from_secs(settings.header_read_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(settings.idle_timeout_secs.max(1)),
            retry_after_secs: settings.retry_after_secs,
        }
    }
}

/// Why a connection ended early, for `cm_http_connections_dropped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Beyond [`HttpSettings::max_connections`].
    OverCap,
    /// The request head (or the TLS handshake) did not arrive in time.
    HeaderTimeout,
    /// No new request on a kept-alive connection in time.
    IdleTimeout,
    /// The TLS handshake failed.
    TlsFailed,
}

impl Dropped {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::OverCap => "over_cap",
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::TlsFailed => "tls_failed",
        }
    }
}

fn count_dropped(why: Dropped) {
    metrics::counter!(metric::CONNECTIONS_DROPPED.name, "reason" => why.as_str()).increment(1);
}

/// Accepts connections on `listener` until `stop` resolves, then waits for the open ones to
/// finish their requests.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Handshakes in progress are abandoned at shutdown: they have no request to finish.
    let (stopping, _) = tokio::sync::watch::channel(false);
    let limits = Arc::new(limits);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning; the
                    // connections already open carry on.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            count_dropped(Dropped::OverCap);
            tracing::debug!(%peer, "connection cap reached: connection refused");
            if tls.is_none() {
                tokio::spawn(refuse(stream, limits.retry_after_secs));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let app = app.clone();
        let tls = tls.clone();
        let limits = Arc::clone(&limits);
        let mut stopping = stopping.subscribe();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, app, &limits, slot, watcher).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    let handshake = tokio::select! {
                        done = handshake => done,
                        _ = stopping.wait_for(|s| *s) => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, &limits, slot, watcher).await;
                        }
                        Ok(Err(e)) => {
                            count_dropped(Dropped::TlsFailed);
                            tracing::debug!(%peer, error = %e, "tls handshake failed");
                        }
                        Err(_) => {
                            count_dropped(Dropped::HeaderTimeout);
                            tracing::debug!(%peer, "tls handshake timed out");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    stopping.send_replace(true);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection beyond the cap with a canned 503 and closes it.
async fn refuse(mut stream: TcpStream, retry_after_secs: u64) {
    const BODY: &str = r#"{"error":{"code":"unavailable","message":"too many open connections, try again later"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: {retry_after_secs}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    slot: OwnedSemaphorePermit,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _slot = slot;
    metrics::gauge!(metric::CONNECTIONS_OPEN.name).increment(1.0);
    let requests = Arc::new(Requests::default());
    let io = TokioIo::new(HeadDeadline::new(
        stream,
        limits.header_read_timeout,
        Arc::clone(&requests),
    ));
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        requests.started.fetch_add(1, Ordering::Relaxed);
        let answered = Answered(Arc::clone(&requests));
        let mut app = app.clone();
        async move {
            let _answered = answered;
            app.call(request.map(axum::body::Body::new)).await
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's header timer starts as soon as the connection waits for a request head, so it
    // is the idle timeout; `HeadDeadline` enforces the shorter head deadline from first byte.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .keep_alive(true);
    let connection = http.serve_connection(io, service);
    if let Err(e) = watcher.watch(connection).await {
        if e.is_timeout() {
            count_dropped(Dropped::IdleTimeout);
            tracing::debug!(%peer, "idle connection closed");
        } else if is_head_deadline(&e) {
            count_dropped(Dropped::HeaderTimeout);
            tracing::debug!(%peer, "request head not received in time: connection closed");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
    metrics::gauge!(metric::CONNECTIONS_OPEN.name).decrement(1.0);
}

fn is_head_deadline(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut && io.to_string() == HEAD_DEADLINE_MESSAGE;
        }
        source = s.source();
    }
    false
}

const HEAD_DEADLINE_MESSAGE: &str = "request head not received in time";

/// The requests of one connection the service has started and answered: while one is in
/// progress, what the connection reads is its body, never a new head.
#[derive(Debug, Default)]
struct Requests {
    started: AtomicU64,
    answered: AtomicU64,
}

/// Counts its request answered when dropped: when the service's future ends, however it ends.
struct Answered(Arc<Requests>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// An I/O wrapper that fails reads once a request head is overdue: `timeout` after the
/// connection was accepted, or after the first byte read while no request is in progress (the
/// body of a request in progress is not a head, however slowly it is answered). Requests in
/// progress (counted by the service in `requests`) are never timed.
struct HeadDeadline<S> {
    inner: S,
    timeout: Duration,
    requests: Arc<Requests>,
    /// The deadline of the head being read, and how many requests had started when it was set.
    deadline: Option<(Pin<Box<Sleep>>, u64)>,
}

impl<S> HeadDeadline<S> {
    fn new(inner: S, timeout: Duration, requests: Arc<Requests>) -> Self {
        let deadline = Some((Box::pin(tokio::time::sleep(timeout)), 0));
        Self {
            inner,
            timeout,
            requests,
            deadline,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let started = self.requests.started.load(Ordering::Relaxed);
        // A head that was pending when the last request started has been read since.
        if self.deadline.as_ref().is_some_and(|(_, at)| *at != started) {
            self.deadline = None;
        }
        if let Some((sleep, _)) = self.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                HEAD_DEADLINE_MESSAGE,
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let in_progress = self.requests.answered.load(Ordering::Relaxed) < started;
        if buf.filled().len() > before && self.deadline.is_none() && !in_progress {
            // The first byte of a new request head: from now on it must complete in time. The
            // request that is still being answered (if any) has been counted already.
            let mut sleep = Box::pin(tokio::time::sleep(self.timeout));
            let _ = sleep.as_mut().poll(cx);
            self.deadline = Some((sleep, started));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_connections: usize, max_open_polls: usize) -> HttpSettings {
        HttpSettings {
            max_connections,
            max_open_polls,
            ..HttpSettings::default()
        }
    }

    const LIMIT: FdLimit = FdLimit {
        soft: 20_000,
        hard: 20_000,
    };

    #[test]
    fn zero_derives_the_cap_from_the_open_file_limit() {
        assert_eq!(
            settings(0, 20_000).connection_cap(LIMIT),
            Ok(20_000 - RESERVED_FDS as usize)
        );
    }

    #[test]
    fn a_cap_above_the_limit_names_the_setting_and_the_limit() {
        let err = settings(50_000, 100).connection_cap(LIMIT).unwrap_err();
        assert!(err.contains("http.max_connections = 50000"), "{err}");
        assert!(err.contains("RLIMIT_NOFILE soft 20000"), "{err}");
    }

    #[test]
    fn more_polls_than_connections_names_both_settings() {
        let err = settings(1_000, 2_000).connection_cap(LIMIT).unwrap_err();
        assert!(err.contains("http.max_open_polls = 2000"), "{err}");
        assert!(err.contains("http.max_connections = 1000"), "{err}");
    }

    #[test]
    fn a_cap_that_fits_is_taken_as_it_is() {
        assert_eq!(settings(10_000, 5_000).connection_cap(LIMIT), Ok(10_000));
    }
}
