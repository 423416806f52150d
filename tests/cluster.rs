//! A fleet of workers on a real 3-node NATS cluster (JetStream replicas 3
//! for the streams and the lease bucket), under steady request-reply and
//! ingest load over 30 tenants, through four scenarios: a fourth worker
//! joins; every worker is restarted in turn (SIGTERM, start again); one
//! worker is SIGKILLed; one NATS node is killed and restarted. After each:
//! every acknowledged write is readable and the last one of each tenant wins,
//! and no partition ever had two owners at once (each worker logs when it
//! acquires and releases a partition; a killed worker's hold ends when it is
//! killed). Failed requests are counted per scenario, with the takeover
//! time after the SIGKILL, and printed for docs/scaling.md, "Tested".
//!
//! The edge backend, per_tenant layout, every worker on one data folder (the
//! shard file locks stay as fencing). Workers are the release binary, run as
//! processes so that SIGTERM and SIGKILL are real.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cluster::{NatsCluster, WorkerProcess};
use serde_json::{json, Value};
use tenantvec::client::{Client, ClientError};
use tenantvec::protocol::Verb;

const TENANTS: usize = 30;
/// The default lease: the takeover after a SIGKILL is measured with it.
const LEASE_TTL: Duration = Duration::from_secs(5);

fn tenant(i: usize) -> String {
    format!("user-{i}")
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Requests made and how they ended, per scenario.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: BTreeMap<String, u64>,
    /// The first few failures in full, for the report.
    examples: Vec<String>,
}

/// What the load has had acknowledged, per tenant: the last version of doc
/// `d` (request-reply upsert) and of doc `i` (JetStream ingest).
#[derive(Default)]
struct Acked {
    upsert: HashMap<String, u64>,
    /// The version last attempted: a request that timed out may still have
    /// been applied.
    tried: HashMap<String, u64>,
    ingest: HashMap<String, u64>,
}

struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    acked: Arc<Mutex<Acked>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn doc(id: &str, version: u64) -> Value {
    json!({
        "doc_id": id,
        "vector": [1.0, version as f64, 0.5, 0.25, 0.0, 0.0, 0.0, 1.0],
        "metadata": {"v": version},
    })
}

fn error_name(e: &ClientError) -> String {
    match e {
        ClientError::Service(s) => s.code.to_string(),
        ClientError::NoWorker { .. } => "no_worker".into(),
        ClientError::TimedOut { .. } => "timeout".into(),
        ClientError::Other(e) => {
            let text = e.to_string();
            if text.contains("timed out") {
                "timeout".into()
            } else {
                text
            }
        }
    }
}

/// Per tenant, one request at a time: upsert a new version of `d`, then
/// search; and one task publishing ingest messages round robin.
async fn start_load(settings: &tenantvec::config::Settings) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut tasks = Vec::new();
    for i in 0..TENANTS {
        let client = Client::connect(settings).await.expect("client");
        let (stop, tally, acked) = (stop.clone(), tally.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let t = tenant(i);
            let mut version = 0u64;
            while !stop.load(Ordering::Relaxed) {
                version += 1;
                acked.lock().unwrap().tried.insert(t.clone(), version);
                let body = json!({"documents": [doc("d", version)]});
                let outcome = client.tenant(Verb::Upsert, &t, &body).await;
                let search =
                    json!({"vector": [1.0, 1.0, 0.5, 0.25, 0.0, 0.0, 0.0, 1.0], "top_k": 3});
                let outcome = match outcome {
                    Ok(_) => {
                        acked.lock().unwrap().upsert.insert(t.clone(), version);
                        client.tenant(Verb::Search, &t, &search).await
                    }
                    Err(e) => Err(e),
                };
                {
                    let mut tally = tally.lock().unwrap();
                    match outcome {
                        Ok(_) => tally.ok += 2,
                        Err(e) => {
                            *tally.failed.entry(error_name(&e)).or_default() += 1;
                            if tally.examples.len() < 5 {
                                tally.examples.push(format!("{t}: {e}"));
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }));
    }
    let nats = tenantvec::transport::connect(&settings.nats)
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(nats);
    let (stop2, acked2) = (stop.clone(), acked.clone());
    let prefix = settings.nats.prefix.clone();
    tasks.push(tokio::spawn(async move {
        let mut version = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            version += 1;
            for i in 0..TENANTS {
                let t = tenant(i);
                let body = serde_json::to_vec(&json!({"documents": [doc("i", version)]})).unwrap();
                // A JetStream publish is acknowledged once the stream holds
                // it; retried (with a message id, so never stored twice)
                // while a NATS node is away.
                let id = format!("{t}-{version}");
                loop {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", id.as_str());
                    let sent = match js
                        .publish_with_headers(
                            format!("{prefix}.ingest.{t}"),
                            headers,
                            body.clone().into(),
                        )
                        .await
                    {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if sent {
                        acked2.lock().unwrap().ingest.insert(t.clone(), version);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    Load {
        stop,
        tally,
        acked,
        tasks,
    }
}

impl Load {
    /// What is acknowledged so far.
    fn acked(&self) -> Acked {
        let a = self.acked.lock().unwrap();
        Acked {
            upsert: a.upsert.clone(),
            tried: a.tried.clone(),
            ingest: a.ingest.clone(),
        }
    }

    /// The tally since the last call, and a fresh one.
    fn take_tally(&self) -> Tally {
        std::mem::take(&mut *self.tally.lock().unwrap())
    }

    async fn finish(self) -> Acked {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        Arc::try_unwrap(self.acked)
            .ok()
            .expect("load tasks done")
            .into_inner()
            .unwrap()
    }
}

/// A hold of a partition: (partition, from, to), in ms since the epoch.
type Hold = (u32, u128, u128);

/// One worker's holds of partitions, from its log.
fn holds(log: &str, killed_at: Option<u128>) -> Vec<Hold> {
    let field = |line: &str, key: &str| -> Option<u128> {
        let start = line.find(&format!("{key}="))? + key.len() + 1;
        line[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let mut open: HashMap<u32, u128> = HashMap::new();
    let mut out = Vec::new();
    // A hold runs from "partition acquired" (logged before the gate
    // opens) to "partition closing" (logged once it stopped admitting, or
    // when the lease ran out if that was earlier).
    for line in log.lines() {
        let Some(p) = field(line, "partition") else {
            continue;
        };
        let p = p as u32;
        if line.contains("partition acquired") {
            if let Some(at) = field(line, "at_ms") {
                open.insert(p, at);
            }
        } else if line.contains("partition closing") {
            if let (Some(from), Some(to)) = (open.remove(&p), field(line, "served_until_ms")) {
                out.push((p, from, to));
            }
        }
    }
    let end = killed_at.unwrap_or(u128::MAX);
    out.extend(open.into_iter().map(|(p, from)| (p, from, end)));
    out
}

/// Panics when two holds of one partition overlap.
fn assert_one_owner(all: &[(String, Vec<Hold>)]) {
    let mut by_partition: BTreeMap<u32, Vec<(u128, u128, &str)>> = BTreeMap::new();
    for (worker, hs) in all {
        for (p, from, to) in hs {
            by_partition
                .entry(*p)
                .or_default()
                .push((*from, *to, worker.as_str()));
        }
    }
    for (p, mut hs) in by_partition {
        hs.sort();
        for pair in hs.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "partition {p} had two owners at once: {} until {} and {} from {}",
                pair[0].2,
                pair[0].1,
                pair[1].2,
                pair[1].0
            );
        }
    }
}

struct Fleet {
    nats_url: String,
    /// The backend's settings (empty: edge).
    backend: Vec<(String, String)>,
    data: tempfile::TempDir,
    workers: Vec<(String, WorkerProcess)>,
    /// Logs of workers that are gone, with when they were killed.
    gone: Vec<(String, String, Option<u128>)>,
    next: usize,
}

impl Fleet {
    fn start_worker(&mut self) -> String {
        self.next += 1;
        let name = format!("w{}", self.next);
        let env: Vec<(String, String)> = vec![
            ("TENANTVEC_CLUSTER".to_owned(), "true".to_owned()),
            ("TENANTVEC_REPLICAS".to_owned(), "3".to_owned()),
            ("TENANTVEC_MEMBER".to_owned(), name.clone()),
            ("RUST_LOG".to_owned(), "info,async_nats=warn".to_owned()),
        ]
        .into_iter()
        .chain(self.backend.iter().cloned())
        .collect();
        let w = WorkerProcess::start(&self.nats_url, self.data.path(), env);
        w.wait_serving(Duration::from_secs(60));
        self.workers.push((name.clone(), w));
        name
    }

    fn terminate(&mut self, index: usize) {
        let (name, w) = self.workers.remove(index);
        let status = w.terminate();
        assert!(
            status.success(),
            "{name} exited with {status}:\n{}",
            w.log()
        );
        self.gone.push((name, w.log(), None));
    }

    fn kill(&mut self, index: usize) -> (String, u128) {
        let (name, w) = self.workers.remove(index);
        let at = unix_ms();
        w.kill();
        self.gone.push((name.clone(), w.log(), Some(at)));
        (name, at)
    }

    fn holds(&self) -> Vec<(String, Vec<Hold>)> {
        let mut all: Vec<_> = self
            .gone
            .iter()
            .map(|(n, log, killed)| (n.clone(), holds(log, *killed)))
            .collect();
        all.extend(
            self.workers
                .iter()
                .map(|(n, w)| (n.clone(), holds(&w.log(), None))),
        );
        all
    }

    /// Wait until every partition is served by a live worker, per the
    /// workers' own stats.
    async fn wait_all_served(&self, client: &Client, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let live: Vec<&str> = self.workers.iter().map(|(n, _)| n.as_str()).collect();
            if let Ok(stats) = client
                .admin(tenantvec::protocol::AdminVerb::Stats, &json!({}))
                .await
            {
                let owners = stats["cluster"]["owners"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !owners.is_empty()
                    && owners
                        .iter()
                        .all(|o| o.as_str().is_some_and(|o| live.contains(&o)))
                {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < limit,
                "partitions not all served by live workers within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every acknowledged write is there, and the last one wins. `settled`:
/// the load has stopped and ingest has drained, so the versions must be
/// exact; while it runs, a tenant's doc may only be at or past its last
/// acknowledged version.
async fn check_writes(client: &Client, acked: &Acked, scenario: &str, settled: bool) {
    for i in 0..TENANTS {
        let t = tenant(i);
        // Retried while `unavailable`: after a NATS node's loss a
        // partition may still be between owners (see the report).
        let started = Instant::now();
        let reply = loop {
            match client
                .tenant(Verb::Get, &t, &json!({"doc_ids": ["d", "i"]}))
                .await
            {
                Ok(r) => break r,
                Err(ClientError::Service(e))
                    if e.code == tenantvec::protocol::ErrorCode::Unavailable
                        && started.elapsed() < Duration::from_secs(60) => {}
                Err(e) => panic!("{scenario}: get {t}: {e}"),
            }
        };
        let version_of = |id: &str| {
            reply["documents"]
                .as_array()
                .and_then(|ds| ds.iter().find(|d| d["doc_id"] == id))
                .and_then(|d| d["metadata"]["v"].as_u64())
        };
        if let Some(want) = acked.upsert.get(&t) {
            let got = version_of("d").unwrap_or(0);
            let tried = match settled {
                true => acked.tried.get(&t).copied().unwrap_or(*want),
                false => u64::MAX,
            };
            assert!(
                got >= *want && got <= tried,
                "{scenario}: {t} doc d is at version {got}, acked {want} (last tried {tried})"
            );
        }
        if let Some(want) = acked.ingest.get(&t).filter(|_| settled) {
            let got = version_of("i").unwrap_or(0);
            assert_eq!(
                got, *want,
                "{scenario}: {t} doc i is at version {got}, the last acked ingest is {want}"
            );
        }
    }
}

/// Wait until the ingest stream holds nothing (every message applied).
async fn wait_ingest_drained(settings: &tenantvec::config::Settings, limit: Duration) {
    let nats = tenantvec::transport::connect(&settings.nats)
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(nats);
    let started = Instant::now();
    loop {
        if let Ok(mut s) = js.get_stream("TENANTVEC_INGEST").await {
            if let Ok(info) = s.info().await {
                if info.state.messages == 0 {
                    return;
                }
            }
        }
        assert!(
            started.elapsed() < limit,
            "ingest not drained within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every worker's log so far, in one file, for a look after a failure.
fn dump_logs(fleet: &Fleet) {
    let mut logs: Vec<String> = fleet
        .gone
        .iter()
        .map(|(n, l, _)| format!("== {n}\n{l}"))
        .collect();
    logs.extend(
        fleet
            .workers
            .iter()
            .map(|(n, w)| format!("== {n}\n{}", w.log())),
    );
    let path = std::env::temp_dir().join("tenantvec-cluster-test.log");
    std::fs::write(&path, logs.join("\n")).ok();
}

fn report(scenario: &str, tally: &Tally, extra: &str) {
    let failed: u64 = tally.failed.values().sum();
    eprintln!(
        "cluster scenario {scenario}: {} requests ok, {failed} failed {:?}{extra}",
        tally.ok, tally.failed
    );
    for e in &tally.examples {
        eprintln!("    {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_keeps_every_write_and_one_owner_through_joins_restarts_and_crashes() {
    fleet_scenarios(Vec::new()).await;
}

/// The same on the qdrant backend: workers that share nothing on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_the_qdrant_backend_keeps_every_write_and_one_owner() {
    let Some(url) = common::qdrant::url_or_skip("a_fleet_on_the_qdrant_backend") else {
        return;
    };
    let space = common::qdrant::Space::new(&url);
    let mut env = vec![
        ("TENANTVEC_BACKEND".to_owned(), "qdrant".to_owned()),
        ("QDRANT_URL".to_owned(), url.clone()),
        ("QDRANT_COLLECTION_PREFIX".to_owned(), space.prefix.clone()),
    ];
    if let Some(key) = common::qdrant::api_key() {
        env.push(("QDRANT_API_KEY".to_owned(), key));
    }
    fleet_scenarios(env).await;
}

/// `tenantvec cluster`, run as an operator would.
fn cluster_command(nats_url: &str) -> Value {
    let out = std::process::Command::new(common::tenantvec_bin())
        .arg("cluster")
        .env("NATS_URL", nats_url)
        .output()
        .expect("run tenantvec cluster");
    assert!(
        out.status.success(),
        "tenantvec cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tenantvec cluster prints JSON")
}

async fn fleet_scenarios(backend: Vec<(String, String)>) {
    let mut nats = NatsCluster::start(3).await;
    // The test's own connections stay on node 0, which is never killed, so
    // what is measured is the fleet's behaviour, not the test client's.
    let mut settings = common::settings(&nats.node_url(0), std::path::Path::new("."));
    settings.nats.request_timeout = Duration::from_secs(15);
    let mut fleet = Fleet {
        nats_url: nats.url(),
        backend,
        data: tempfile::tempdir().unwrap(),
        workers: Vec::new(),
        gone: Vec::new(),
        next: 0,
    };
    for _ in 0..3 {
        fleet.start_worker();
    }
    let client = Client::connect(&settings).await.unwrap();
    fleet
        .wait_all_served(&client, Duration::from_secs(30))
        .await;
    // The load's clients retry as users' do (every verb here is safe to
    // retry): a reply lost with a killed worker or node is asked again
    // after 3 s, within the 30 s that a lease election and a partition's
    // take-over fit in.
    let mut retrying = settings.clone();
    retrying.nats.request_timeout = Duration::from_secs(3);
    retrying.nats.retry_deadline = Duration::from_secs(30);
    let load = start_load(&retrying).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warmup = load.take_tally();
    assert!(warmup.ok > 0, "no request succeeded under the steady load");
    report("steady (3 workers)", &warmup, "");

    // 1. A fourth worker joins.
    fleet.start_worker();
    let took = fleet
        .wait_all_served(&client, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let joined = load.take_tally();
    report("join", &joined, &format!(", rebalanced in {took:?}"));
    // Partitions still moving to the new member are between owners for a
    // moment (released by one, not yet taken by the other): the fleet
    // settles with none unowned.
    let settling = Instant::now();
    let described = loop {
        let described = cluster_command(&nats.node_url(0));
        let settled = described["members"].as_array().map(Vec::len) == Some(4)
            && described["unowned"] == json!([]);
        if settled || settling.elapsed() > Duration::from_secs(20) {
            break described;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        described["members"].as_array().map(Vec::len),
        Some(4),
        "{described:#}"
    );
    assert_eq!(described["unowned"], json!([]), "{described:#}");
    assert_eq!(described["config"]["partitions"], json!(16));
    dump_logs(&fleet);
    assert_one_owner(&fleet.holds());
    check_writes(&client, &load.acked(), "join", false).await;

    // 2. Every worker restarted in turn.
    let started = Instant::now();
    for _ in 0..fleet.workers.len() {
        fleet.terminate(0);
        fleet.start_worker();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fleet
        .wait_all_served(&client, Duration::from_secs(30))
        .await;
    let rolled = load.take_tally();
    report(
        "rolling restart",
        &rolled,
        &format!(", 4 workers in {:?}", started.elapsed()),
    );
    dump_logs(&fleet);
    assert_one_owner(&fleet.holds());
    check_writes(&client, &load.acked(), "rolling restart", false).await;

    // 3. One worker SIGKILLed.
    let (killed, _) = fleet.kill(1);
    let takeover = fleet
        .wait_all_served(&client, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let crashed = load.take_tally();
    report(
        "SIGKILL",
        &crashed,
        &format!(
            ", {killed}'s partitions taken over {takeover:?} after the kill (lease {LEASE_TTL:?})"
        ),
    );
    dump_logs(&fleet);
    assert_one_owner(&fleet.holds());
    check_writes(&client, &load.acked(), "SIGKILL", false).await;

    // 4. One NATS node killed and restarted.
    nats.kill(2);
    tokio::time::sleep(Duration::from_secs(5)).await;
    nats.restart(2);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fleet
        .wait_all_served(&client, Duration::from_secs(60))
        .await;
    let node = load.take_tally();
    report("NATS node restart", &node, "");
    dump_logs(&fleet);
    assert_one_owner(&fleet.holds());
    check_writes(&client, &load.acked(), "NATS node restart", false).await;

    let acked = load.finish().await;
    // After the NATS node's loss, a message whose ack was lost with the
    // node is delivered again only after `ingest.ack_wait` (60 s).
    wait_ingest_drained(&settings, Duration::from_secs(150)).await;
    dump_logs(&fleet);
    eprintln!(
        "worker logs: {}",
        std::env::temp_dir()
            .join("tenantvec-cluster-test.log")
            .display()
    );
    check_writes(&client, &acked, "after all scenarios", true).await;

    // Goal: clients that retry ride out everything the fleet survives: a
    // worker joining, every worker restarted, one SIGKILLed, a NATS node
    // lost and back. Not one request fails.
    for (name, tally) in [
        ("join", &joined),
        ("rolling restart", &rolled),
        ("SIGKILL", &crashed),
        ("NATS node restart", &node),
    ] {
        assert!(
            tally.failed.is_empty(),
            "{name}: requests failed although the clients retry: {:?} (e.g. {:?})",
            tally.failed,
            tally.examples
        );
    }
}

/// The edge store's shared layout in a fleet: a shard per partition, which
/// moves with its partition. Two workers share a data folder; documents
/// written through them are all there after one stops (its partitions'
/// shards closed and opened by the other) and after a third joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_layout_moves_a_shard_per_partition() {
    let nats = common::NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let env = vec![
            ("TENANTVEC_CLUSTER".to_owned(), "true".to_owned()),
            ("TENANTVEC_LAYOUT".to_owned(), "shared".to_owned()),
            ("TENANTVEC_MEMBER".to_owned(), name.to_owned()),
        ];
        let w = WorkerProcess::start(&nats.url(), data.path(), env);
        w.wait_serving(Duration::from_secs(60));
        w
    };
    let first = start("s1");
    let second = start("s2");
    let settings = common::settings(&nats.url(), data.path());
    let client = Client::connect(&settings).await.unwrap();
    let count = |t: String| {
        let client = &client;
        async move {
            let started = Instant::now();
            loop {
                match client.tenant(Verb::Count, &t, &json!({})).await {
                    Ok(r) => return r["count"].as_u64().unwrap(),
                    Err(e) if started.elapsed() < Duration::from_secs(30) => {
                        eprintln!("count {t}: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("count {t}: {e}"),
                }
            }
        }
    };
    for i in 0..12 {
        let docs: Vec<Value> = (0..=i as u64).map(|v| doc(&format!("d{v}"), v)).collect();
        client
            .tenant(Verb::Upsert, &tenant(i), &json!({ "documents": docs }))
            .await
            .unwrap_or_else(|e| panic!("upsert {}: {e}", tenant(i)));
    }
    for i in 0..12 {
        assert_eq!(count(tenant(i)).await, i as u64 + 1);
    }
    let shards = std::fs::read_dir(data.path().join("_shared"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('p'))
        .count();
    assert!(shards > 1, "expected a shard per partition, found {shards}");
    assert!(first.terminate().success(), "{}", first.log());
    for i in 0..12 {
        assert_eq!(count(tenant(i)).await, i as u64 + 1, "after s1 stopped");
    }
    let third = start("s3");
    // Partitions move to the newcomer one by one, each shard closed by s2
    // before s3 opens it.
    third.wait_log("partition acquired", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..12 {
        assert_eq!(count(tenant(i)).await, i as u64 + 1, "after s3 joined");
    }
    assert!(second.terminate().success());
    assert!(third.terminate().success());
    // Every hand-over closed its shard (no tenant's store still held it).
    for log in [first.log(), second.log(), third.log()] {
        assert!(!log.contains("still in use at its hand-over"), "{log}");
        assert!(!log.contains("ERROR"), "{log}");
    }
}
