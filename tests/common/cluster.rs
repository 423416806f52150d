//! Test harness for a fleet: a real nats-server cluster of N nodes on
//! loopback (JetStream clustered, each node with its own store, client port
//! and cluster port, routed to every other node), and the worker binary as
//! a child process with its output in a log file. Nodes can be killed and
//! restarted in place, workers stopped by SIGTERM or SIGKILL.
//!
//! It owns those processes and their folders, and must never leave one
//! behind: every node and worker is killed, and every folder removed, when
//! its guard drops, also when a test fails. It never stands in for
//! nats-server or the worker; a missing nats-server binary fails the test
//! loudly (as `NatsServer` does), whether or not `CI` is set.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::Value;
use tempfile::TempDir;

use super::{nats_server_bin, tenantvec_bin, wait_child_listening};

/// How long `NatsCluster::start` waits for a JetStream meta leader that can
/// place a stream on every node. Measured at 1.2 s for three nodes on a
/// 2-core machine (nats-server 2.15.1); the margin is for a loaded CI
/// runner.
const JETSTREAM_READY_LIMIT: Duration = Duration::from_secs(30);

/// Lines of a log shown when a test fails with the process still owned.
const LOG_TAIL_LINES: usize = 40;

/// `k` distinct free loopback ports. The listeners are all held until every
/// port is known: `free_port` called k times may hand out one port twice,
/// since each call releases its port before the next asks.
fn free_ports(k: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..k)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A log file to which a child's stdout and stderr are both appended.
/// Appending, so a restarted process adds to what the earlier one wrote.
fn log_sink(path: &Path) -> (Stdio, Stdio) {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open the log {}: {e}", path.display()));
    let clone = file.try_clone().expect("a second handle on the log file");
    (Stdio::from(file), Stdio::from(clone))
}

/// One node of a [`NatsCluster`]: its ports, and a folder with its config
/// file, its JetStream store and its log.
struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Node {
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn write_config(&self, cluster_name: &str, route_ports: &[u16]) {
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("    \"nats-route://127.0.0.1:{p}\""))
            .collect();
        let store = self.dir.path().join("jetstream");
        // JetStream limits are set because three servers on one machine
        // would each otherwise reserve three quarters of its memory and
        // disk; these are far above what a test stores.
        let config = format!(
            "server_name: {name}\n\
             listen: \"127.0.0.1:{port}\"\n\
             jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 1GB\n}}\n\
             cluster {{\n  name: {cluster_name}\n  listen: \"127.0.0.1:{cport}\"\n  routes: [\n{routes}\n  ]\n}}\n",
            name = self.name,
            port = self.port,
            store = store.display().to_string(),
            cport = self.cluster_port,
            routes = routes.join("\n"),
        );
        std::fs::write(self.config_path(), config).expect("write the node's config");
    }

    fn spawn(&mut self) {
        let (stdout, stderr) = log_sink(&self.log_path());
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(self.config_path())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run scripts/setup first",
                    nats_server_bin().display()
                )
            });
        let up = wait_child_listening(
            &mut self.child,
            child,
            self.port,
            Duration::from_secs(10),
            &self.name,
        );
        // Its ports are written in the other nodes' routes: no retry on others.
        assert!(
            up,
            "{} exited at start (port {} taken?): {}",
            self.name,
            self.port,
            self.log()
        );
    }

    fn kill(&mut self) {
        super::kill(&mut self.child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// A cluster of real nats-server processes with clustered JetStream, named
/// `n0`, `n1`, … on loopback; every node is killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
    name: String,
}

impl NatsCluster {
    /// Start `n` nodes and return once JetStream has a meta leader and can
    /// place a stream with `n` replicas; panics, with the nodes' logs, if
    /// that takes more than 30 s.
    pub async fn start(n: usize) -> Self {
        assert!(n >= 1, "a cluster needs at least one node");
        let ports = free_ports(2 * n);
        let mut cluster = Self {
            nodes: (0..n)
                .map(|i| Node {
                    name: format!("n{i}"),
                    port: ports[2 * i],
                    cluster_port: ports[2 * i + 1],
                    dir: tempfile::tempdir().expect("temp dir"),
                    child: None,
                })
                .collect(),
            name: "tenantvec-test".into(),
        };
        let cluster_ports: Vec<u16> = cluster.nodes.iter().map(|n| n.cluster_port).collect();
        for node in &cluster.nodes {
            // Routes to the other nodes only; every node names all of its
            // peers, so the mesh does not depend on gossip.
            let others: Vec<u16> = cluster_ports
                .iter()
                .copied()
                .filter(|p| *p != node.cluster_port)
                .collect();
            node.write_config(&cluster.name, &others);
        }
        // One after another, each waited for until it listens (tens of
        // milliseconds): a node that comes up alone just retries its routes
        // once a second, and the meta leader is elected once they connect.
        for node in &mut cluster.nodes {
            node.spawn();
        }
        cluster.wait_jetstream(JETSTREAM_READY_LIMIT).await;
        cluster
    }

    /// The number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's client URL, comma-joined, as `nats.url` takes them.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Node `i`'s client URL.
    pub fn node_url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// The server name of node `i` (`n<i>`), as JetStream reports leaders
    /// and peers.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node with server name `name`, if it is one of ours.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// How many nodes run (were neither killed nor are awaiting restart).
    pub fn running(&self) -> usize {
        self.nodes.iter().filter(|n| n.child.is_some()).count()
    }

    /// Everything node `i` has logged, over all its restarts.
    pub fn node_log(&self, i: usize) -> String {
        self.nodes[i].log()
    }

    /// SIGKILL node `i` and reap it; its store is kept for `restart`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Start node `i` again (killing it first if it runs) on the same ports
    /// with the same store, and wait until it listens for clients. It may
    /// not have caught up with its streams yet.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].spawn();
    }

    /// A client that knows every node, so it reconnects to another when
    /// its node goes away.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .connect(self.urls().as_slice())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the cluster at {}: {e}", self.url()))
    }

    /// Wait until JetStream has a meta leader (`$JS.API.INFO` answers
    /// without an error) and then until it can place a stream on every
    /// running node (a leader may be elected before it knows all its
    /// peers). Returns how long that took; panics with the nodes' logs
    /// after `limit`.
    pub async fn wait_jetstream(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        let deadline = started + limit;
        let client = self.client().await;
        let mut last: String;
        loop {
            match tokio::time::timeout(
                Duration::from_secs(1),
                client.request("$JS.API.INFO", "".into()),
            )
            .await
            {
                Ok(Ok(msg)) => match serde_json::from_slice::<Value>(&msg.payload) {
                    Ok(v) if v.get("error").is_none() => break,
                    Ok(v) => last = v["error"].to_string(),
                    Err(e) => last = format!("not JSON: {e}"),
                },
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer within 1 s".into(),
            }
            self.check_deadline(deadline, limit, "a JetStream meta leader", &last);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Memory storage: the probe is created and deleted at once, and a
        // file store would only add disk work to every cluster start.
        let js = jetstream::new(client);
        let probe = jetstream::stream::Config {
            name: "HARNESS_PROBE".into(),
            subjects: vec!["harness.probe".into()],
            num_replicas: self.running().max(1),
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        loop {
            match tokio::time::timeout(Duration::from_secs(2), js.create_stream(probe.clone()))
                .await
            {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer within 2 s".into(),
            }
            self.check_deadline(deadline, limit, "a stream placed on every node", &last);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        js.delete_stream("HARNESS_PROBE")
            .await
            .expect("delete the readiness probe stream");
        started.elapsed()
    }

    fn check_deadline(&self, deadline: Instant, limit: Duration, what: &str, last: &str) {
        if Instant::now() < deadline {
            return;
        }
        let logs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, tail(&n.log(), LOG_TAIL_LINES)))
            .collect();
        panic!(
            "the {}-node cluster had no {what} within {limit:?} (last answer: {last})\n{}",
            self.nodes.len(),
            logs.join("\n")
        );
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "--- {} log (last {LOG_TAIL_LINES} lines) ---\n{}",
                    node.name,
                    tail(&node.log(), LOG_TAIL_LINES)
                );
            }
        }
    }
}

/// The worker binary as `tenantvec serve`, its stdout and stderr appended
/// to a log file of its own; killed on drop.
pub struct WorkerProcess {
    /// Behind a mutex so that `is_running` takes `&self` and can be the
    /// "has it died" check of `wait_ready`.
    child: Mutex<Child>,
    pid: u32,
    log_dir: TempDir,
}

impl WorkerProcess {
    /// Start the worker on `nats_url` (one URL or several, comma-joined)
    /// with `data` as its data root. The defaults are those of
    /// `spawn_worker_binary`, except the log level: 8 dimensions, no metrics
    /// listener, `RUST_LOG=info` (so the log says when it serves and
    /// stops). `env` comes last and overrides any of them.
    pub fn start(nats_url: &str, data: &Path, env: Vec<(String, String)>) -> Self {
        let log_dir = tempfile::tempdir().expect("temp dir");
        let (stdout, stderr) = log_sink(&log_dir.path().join("worker.log"));
        let mut cmd = Command::new(tenantvec_bin());
        cmd.arg("serve")
            .env("NATS_URL", nats_url)
            .env("VECTOR_STORE_FOLDER", data)
            .env("EMBEDDING_DIM", "8")
            .env("TENANTVEC_METRICS_LISTEN", "")
            .env("RUST_LOG", "info")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); build it with cargo build --release",
                tenantvec_bin().display()
            )
        });
        Self {
            pid: child.id(),
            child: Mutex::new(child),
            log_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> PathBuf {
        self.log_dir.path().join("worker.log")
    }

    /// Everything the worker has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A poisoned lock only means another test thread panicked holding it;
    /// the child handle is still sound.
    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_running(&self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    /// Wait until the log has a line containing `needle`; panics with the
    /// log if the worker exits first or `limit` passes.
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains(needle) {
                return;
            }
            assert!(
                self.is_running(),
                "the worker exited before logging {needle:?}; its log:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "the worker did not log {needle:?} within {limit:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until this worker (not just any worker of the prefix) serves:
    /// its log says so once its service and ingest consumer are up. Needs
    /// an info-level log, the default here.
    pub fn wait_serving(&self, limit: Duration) {
        self.wait_log("tenantvec worker serving", limit);
    }

    /// SIGTERM, then wait up to 60 s for the exit; its status. Panics with
    /// the log if the worker is still running after that (and kills it).
    pub fn terminate(&self) -> ExitStatus {
        let mut child = self.child();
        // The signal is sent only while the child is known unreaped (the
        // lock is held from this check to the kill), so the pid cannot have
        // been reused by another process. `kill -TERM`, as the other tests
        // send it, keeps unsafe code out of the harness.
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.pid);
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the worker") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                drop(child);
                panic!(
                    "the worker did not exit within {limit:?} of SIGTERM; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap; the exit status (that of an earlier exit, if the
    /// worker had already ended).
    pub fn kill(&self) -> ExitStatus {
        let mut child = self.child();
        // An error here means the child has already exited; `wait` then
        // returns its status.
        let _ = child.kill();
        child.wait().expect("reap the worker")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- worker {} log (last {LOG_TAIL_LINES} lines) ---\n{}",
                self.pid,
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
    }
}
