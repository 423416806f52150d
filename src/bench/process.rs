//! The worker under test as a child process, its scratch data folder, and
//! the wait until it answers.
//!
//! Owns the child's life. It must never leave the child running or its data
//! behind when the benchmark ends, however it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::BenchOptions;
use tenantvec::client::Client;
use tenantvec::config::Settings;
use tenantvec::protocol::AdminVerb;

/// The worker under test, as a child process; stopped with SIGTERM on drop.
pub(super) struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    pub(super) fn start(
        settings: &Settings,
        opts: &BenchOptions,
        data: &Path,
        pool_size: usize,
    ) -> anyhow::Result<Self> {
        let layout = match opts.layout {
            tenantvec::config::Layout::PerTenant => "per_tenant",
            tenantvec::config::Layout::Shared => "shared",
        };
        let backend = match opts.backend {
            tenantvec::config::Backend::Edge => "edge",
            tenantvec::config::Backend::Qdrant => "qdrant",
        };
        let child = Command::new(std::env::current_exe()?)
            .args(["serve", "--prefix", &settings.nats.prefix])
            .env("NATS_URL", &settings.nats.url)
            .env("VECTOR_STORE_FOLDER", data)
            .env("VECTOR_STORE_POOL_SIZE", pool_size.to_string())
            .env("TENANTVEC_LAYOUT", layout)
            .env("TENANTVEC_BACKEND", backend)
            .env("QDRANT_URL", &settings.store.qdrant_url)
            .env("QDRANT_COLLECTION_PREFIX", &opts.collection_prefix)
            // Not the default metrics port, which a running worker may hold;
            // BENCH_METRICS_LISTEN gives one, to watch the worker's own
            // figures during a run.
            .env(
                "TENANTVEC_METRICS_LISTEN",
                std::env::var("BENCH_METRICS_LISTEN").unwrap_or_default(),
            )
            // BENCH_WORKER_LOG sets the worker's log filter, e.g. to time
            // shard opens with "warn,tenantvec::store=debug".
            .env(
                "RUST_LOG",
                std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self { child })
    }

    /// Memory of the worker, in MiB.
    pub(super) fn rss_mb(&self) -> Value {
        json!(tenantvec::memory::Memory::of(self.child.id()))
    }

    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    pub(super) fn terminate(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()?;
            let status = self.child.wait()?;
            anyhow::ensure!(status.success(), "the worker exited with {status}");
        }
        Ok(())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// A data root made for one run; removed (with the shards the run wrote,
/// often gigabytes) when the run ends, also when it fails.
pub(super) struct TempData(pub(super) PathBuf);

impl TempData {
    pub(super) fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("tenantvec-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempData {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Wait until the worker on our prefix answers (a PING could be answered
/// by a worker on another prefix).
pub(super) async fn wait_ready(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = tokio::time::timeout(
            Duration::from_millis(500),
            client.admin(AdminVerb::Stats, &json!({})),
        )
        .await;
        if let Ok(Ok(_)) = stats {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the worker never answered PING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
