//! A shutdown that always ends: the worker binary, run as a child process,
//! with a store call that hangs (the qdrant backend pointed at a TCP
//! listener of the test that accepts connections and never answers, with a
//! ten-minute `QDRANT_TIMEOUT`). Past `worker.shutdown_timeout` it exits
//! non-zero naming the unfinished tenant; a second SIGTERM ends it at once.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{tenantvec_bin, wait_ready, NatsServer};
use serde_json::json;
use tenantvec::client::Client;
use tenantvec::protocol::Verb;

/// A "Qdrant server" that takes connections and never says a word; the
/// connections stay open as long as the test runs.
fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

fn spawn_worker(nats: &NatsServer, data: &Path, qdrant_port: u16, shutdown_timeout: &str) -> Child {
    let config = data.join("worker.toml");
    std::fs::write(
        &config,
        format!("[worker]\nshutdown_timeout = \"{shutdown_timeout}\"\n"),
    )
    .expect("write config");
    Command::new(tenantvec_bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("NATS_URL", nats.url())
        .env("VECTOR_STORE_FOLDER", data)
        .env("EMBEDDING_DIM", "8")
        .env("TENANTVEC_BACKEND", "qdrant")
        .env("QDRANT_URL", format!("http://127.0.0.1:{qdrant_port}"))
        .env("QDRANT_TIMEOUT", "600s")
        .env("TENANTVEC_METRICS_LISTEN", "")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the tenantvec binary")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Wait for the child to exit; `None` if it is still running after `limit`
/// (a generous bound, so a slow machine does not fail the test: the point is
/// that it ends, not how fast).
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Start a worker whose store hangs, and leave a request hanging in it.
async fn hung_worker(shutdown_timeout: &str) -> (Child, NatsServer, tempfile::TempDir) {
    tenantvec::init_tracing(&std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into()));
    let nats = NatsServer::start();
    let data = tempfile::tempdir().expect("temp dir");
    let port = silent_server();
    let child = spawn_worker(&nats, data.path(), port, shutdown_timeout);
    let mut settings = common::settings(&nats.url(), data.path());
    settings.nats.request_timeout = Duration::from_secs(600);
    wait_ready(&settings, || false).await;
    let client = Client::connect(&settings).await.expect("client");
    tokio::spawn(async move {
        let _ = client.tenant(Verb::Count, "stuck", &json!({})).await;
    });
    // The request reaches the store, whose call then waits on the silent
    // server; nothing in the test depends on how long this takes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (child, nats, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_past_the_timeout_exits_non_zero_naming_the_tenant() {
    let (mut child, _nats, _data) = hung_worker("2s").await;
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the worker did not exit within 60 s of SIGTERM with a 2 s shutdown timeout");
    };
    let mut log = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut log);
    }
    assert!(!status.success(), "exit status {status}; log: {log}");
    assert_eq!(status.code(), Some(1), "log: {log}");
    assert!(
        log.contains("shutdown timed out") && log.contains("stuck"),
        "the log names the unfinished tenant: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    // A shutdown timeout far beyond the wait below: only the second signal
    // can end the process in time.
    let (mut child, _nats, _data) = hung_worker("1h").await;
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "still draining after the first signal"
    );
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the worker did not exit after a second SIGTERM");
    };
    assert_eq!(status.code(), Some(143), "exit status {status}");
}
