//! The connection defences of `serve`, over real sockets: slow heads and idle connections are
//! dropped, requests in progress never are, and connections beyond the cap are refused without
//! harming the open ones.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cm_api_http::{HttpSettings, serve};
use support::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(http: HttpSettings) -> Self {
        let app = App::new(http, false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app.state.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        self.task
            .await
            .expect("server task")
            .expect("served without error");
    }
}

fn quick(header: u64, idle: u64) -> HttpSettings {
    HttpSettings {
        header_read_timeout_secs: header,
        idle_timeout_secs: idle,
        ..HttpSettings::default()
    }
}

/// Reads until the server closes the connection; answers what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends one complete request on `stream` and reads its whole answer (bodies are small and
/// carry `content-length`).
async fn request(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("content-length");
            if body.len() >= len {
                return text.into_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_completes_is_dropped_after_the_header_timeout() {
    let server = Server::start(quick(1, 60)).await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    // Meanwhile the server answers others.
    let mut other = TcpStream::connect(server.addr).await.expect("connect");
    assert!(
        request(&mut other, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let answer = read_to_close(&mut slow).await;
    assert!(answer.is_empty(), "no answer to half a head: {answer}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_dropped_after_the_header_timeout() {
    let server = Server::start(quick(1, 60)).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    assert!(read_to_close(&mut silent).await.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_is_closed_once_idle_and_not_before_the_next_head() {
    let server = Server::start(quick(1, 2)).await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    assert!(
        request(&mut conn, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // The same connection serves a second request: keep-alive works.
    let second_sent = Instant::now();
    assert!(
        request(&mut conn, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(read_to_close(&mut conn).await.is_empty());
    // Idle means idle since the last answer, not since the connection began; and the shorter
    // header timeout does not apply while no byte of a new head has come.
    assert!(second_sent.elapsed() >= Duration::from_secs(2));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_outlives_the_header_and_idle_timeouts() {
    let server = Server::start(quick(1, 1)).await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    conn.write_all(
        b"POST /api/v1/agents/a1/poll?wait=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]);
    // The poll ran its whole wait (longer than both timeouts) and answered; unknown agents
    // simply get nothing.
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_a_quick_503_and_the_open_ones_carry_on() {
    let server = Server::start(HttpSettings {
        max_connections: 2,
        max_open_polls: 2,
        ..HttpSettings::default()
    })
    .await;
    let mut first = TcpStream::connect(server.addr).await.expect("connect");
    let mut second = TcpStream::connect(server.addr).await.expect("connect");
    // Both are served, so both hold their slots.
    assert!(
        request(&mut first, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        request(&mut second, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let mut third = TcpStream::connect(server.addr).await.expect("connect");
    let refused = read_to_close(&mut third).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 5"),
        "{refused}"
    );
    assert!(refused.contains(r#""code":"unavailable""#), "{refused}");

    // The open ones are untouched; once one closes, a new connection is served again.
    assert!(
        request(&mut first, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    drop(second);
    let mut fourth = loop {
        let mut conn = TcpStream::connect(server.addr).await.expect("connect");
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let answer = read_to_close(&mut conn).await;
        if answer.starts_with("HTTP/1.1 200") {
            break conn;
        }
        // The server has not yet seen the dropped connection go: refused meanwhile.
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        tokio::task::yield_now().await;
    };
    let _ = fourth.shutdown().await;
    server.stop().await;
}
