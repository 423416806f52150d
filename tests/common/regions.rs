//! Regions on loopback: a hub nats-server without JetStream that takes leaf
//! node connections, and per region one nats-server with JetStream in a
//! domain named after the region, joined to the hub as a leaf node, with
//! its own data folder and workers (the built binary). The layout
//! docs/regions.md recommends, at one server a region.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tempfile::TempDir;
use tenantvec::client::Client;

use super::cluster::WorkerProcess;
use super::NatsServer;
use super::{free_port, kill, nats_server_bin, on_free_ports, settings, wait_child_listening};

/// The hub the regions' servers connect to.
pub struct Hub {
    child: Option<Child>,
    pub port: u16,
    pub leaf_port: u16,
    dir: TempDir,
}

impl Hub {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut hub = Self {
            child: None,
            port: 0,
            leaf_port: 0,
            dir,
        };
        on_free_ports("hub nats-server", |port| {
            hub.port = port;
            hub.leaf_port = free_port();
            let config = hub.dir.path().join("hub.conf");
            std::fs::write(
                &config,
                format!(
                    "server_name: hub\nleafnodes {{ listen: \"127.0.0.1:{}\" }}\n",
                    hub.leaf_port
                ),
            )
            .expect("write hub.conf");
            let child = Command::new(nats_server_bin())
                .arg("-c")
                .arg(&config)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the hub nats-server");
            wait_child_listening(
                &mut hub.child,
                child,
                port,
                Duration::from_secs(10),
                "hub nats-server",
            )
        });
        hub
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// One region: its server, its data folder, its workers.
pub struct Region {
    pub name: String,
    pub nats: NatsServer,
    pub data: TempDir,
    pub workers: Vec<WorkerProcess>,
    /// Every region's name, for the workers' `worker.regions`.
    all: String,
    _config: TempDir,
}

impl Region {
    fn start(name: &str, all: &[&str], hub: &Hub) -> Self {
        let config_dir = tempfile::tempdir().expect("temp dir");
        let config = config_dir.path().join(format!("{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\njetstream {{ domain: {name} }}\n\
                 leafnodes {{ remotes [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ] }}\n",
                hub.leaf_port
            ),
        )
        .expect("write the region's server config");
        Self {
            name: name.to_owned(),
            nats: NatsServer::start_with_config(config),
            data: tempfile::tempdir().expect("temp dir"),
            workers: Vec::new(),
            all: all.join(","),
            _config: config_dir,
        }
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }

    /// The environment of this region's workers and command lines.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TENANTVEC_REGION".into(), self.name.clone()),
            ("TENANTVEC_REGIONS".into(), self.all.clone()),
        ]
    }

    /// Start a worker of this region (more `env` after the region's).
    pub fn start_worker(&mut self, env: Vec<(String, String)>) {
        let mut all = self.env();
        all.extend(env);
        let worker = WorkerProcess::start(&self.url(), self.data.path(), all);
        worker.wait_serving(Duration::from_secs(60));
        self.workers.push(worker);
    }

    /// A client of this region (settings as the tests' workers have them).
    pub async fn client(&self) -> Client {
        let mut s = settings(&self.url(), self.data.path());
        s.worker.region = self.name.clone();
        s.worker.regions = self.all.split(',').map(str::to_owned).collect();
        Client::connect(&s).await.expect("client connects")
    }

    /// `tenantvec <args>` against this region.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = super::cli_command(&self.url(), args);
        cmd.envs(self.env());
        cmd
    }

    /// The folder of this region's JetStream store.
    pub fn jetstream_dir(&self) -> &Path {
        self.nats.store.path()
    }

    /// Stop the region: its workers killed, its server stopped.
    pub fn lose(&mut self) {
        for w in &self.workers {
            w.kill();
        }
        self.workers.clear();
        self.nats.stop();
    }
}

/// A hub and its regions.
pub struct World {
    pub hub: Hub,
    pub regions: Vec<Region>,
}

impl World {
    /// The hub and a region of each name, each with `workers` workers; back
    /// once every worker answers from every region.
    pub async fn start(names: &[&str], workers: usize) -> Self {
        let hub = Hub::start();
        let mut regions: Vec<Region> = names
            .iter()
            .map(|n| Region::start(n, names, &hub))
            .collect();
        // Linked before the first worker makes its directory: JetStream
        // retries a source it could not reach only after tens of seconds.
        linked(&regions).await;
        for r in &mut regions {
            for _ in 0..workers {
                r.start_worker(Vec::new());
            }
        }
        let world = Self { hub, regions };
        world.wait_joined(names.len() * workers).await;
        if workers > 0 {
            world.wait_linked().await;
        }
        world
    }

    /// Wait until a worker of every region reads every region's registry
    /// (`admin.stats`: no region unlinked).
    pub async fn wait_linked(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for r in &self.regions {
            let client = r.client().await;
            loop {
                let stats = client
                    .admin(
                        tenantvec::protocol::AdminVerb::Stats,
                        &serde_json::json!({}),
                    )
                    .await
                    .expect("stats");
                if stats["regions"]["unlinked"]
                    .as_array()
                    .is_some_and(Vec::is_empty)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "region {}'s directory does not read every region: {}",
                    r.name,
                    stats["regions"]
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    pub fn region(&mut self, name: &str) -> &mut Region {
        self.regions
            .iter_mut()
            .find(|r| r.name == name)
            .expect("a region of that name")
    }

    /// Wait until `workers` tenantvec instances answer a ping from every
    /// region: the leaf connections are up and interest has spread.
    pub async fn wait_joined(&self, workers: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for r in &self.regions {
            let nats = async_nats::connect(r.url()).await.expect("connect");
            loop {
                let seen = ping(&nats).await;
                if seen >= workers {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "from region {}, {seen} of {workers} workers answer",
                    r.name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Wait until a message published in each region reaches a subscriber in
/// every other: their leaf connections to the hub are up.
pub async fn linked(regions: &[Region]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for to in regions {
        let there = async_nats::connect(to.url()).await.expect("connect");
        let subject = format!("linked.{}", to.name);
        let mut sub = there.subscribe(subject.clone()).await.expect("subscribe");
        there.flush().await.expect("flush");
        let responder = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = there.publish(reply, "".into()).await;
                }
            }
        });
        for from in regions.iter().filter(|r| r.name != to.name) {
            let here = async_nats::connect(from.url()).await.expect("connect");
            loop {
                let asked = tokio::time::timeout(
                    Duration::from_millis(500),
                    here.request(subject.clone(), "".into()),
                );
                if matches!(asked.await, Ok(Ok(_))) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "region {} does not reach region {}",
                    from.name,
                    to.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        responder.abort();
    }
}

/// How many tenantvec instances answer `$SRV.PING.tenantvec` within 500 ms.
async fn ping(nats: &async_nats::Client) -> usize {
    let inbox = nats.new_inbox();
    let Ok(mut replies) = nats.subscribe(inbox.clone()).await else {
        return 0;
    };
    let _ = nats
        .publish_with_reply("$SRV.PING.tenantvec", inbox, "".into())
        .await;
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, replies.next()).await {
        n += 1;
    }
    n
}

/// Files under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
            {
                found.push(p);
            }
        }
    }
    found
}
