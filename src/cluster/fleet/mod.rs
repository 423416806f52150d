//! Membership and leases: how this worker joins the fleet of a prefix,
//! takes the partitions the assignment gives it, keeps them, and gives them
//! back.
//!
//! Owns two JetStream KV buckets and every write to them:
//!
//! * `TENANTVEC_FLEET[_<PREFIX>]`, key `config`: what every worker of the
//!   prefix must agree on (partitions, backend, layout), written by the
//!   first worker and never expiring;
//! * `TENANTVEC_LEASES[_<PREFIX>]`, with a maximum age of
//!   `cluster.lease_ttl`: `member.<name>`, each live worker's record, and
//!   `lease.<partition>`, the name of the partition's owner. A key not
//!   renewed within the lease's time is removed by the server itself; a
//!   lease is taken with create-if-absent and renewed with the revision its
//!   holder last wrote, so two workers can never both hold it.
//!
//! A partition is served only between its lease being taken and its
//! release: its gate opens after the lease is taken and its ingest consumer
//! started, and a release closes the gate, waits for the requests inside,
//! settles the partition (ingest drained, stores closed), and only then
//! deletes the lease. A lease this worker cannot renew is given up before
//! it can expire (fenced). It must never serve a partition without its
//! lease, nor delete a lease whose partition is not settled.

mod leases;

use leases::Run;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::future::{join_all, BoxFuture};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::Settings;
use crate::names::name_suffix;

/// What the owner of a partition starts and settles; the worker wires it to
/// its ingest and its supervisor.
pub trait Partitions: Send + Sync + 'static {
    /// The lease is held: start what serves the partition (its ingest
    /// consumer). An error gives the lease back, to be tried again.
    fn start(&self, partition: u32) -> BoxFuture<'static, anyhow::Result<()>>;
    /// The gate is closed and empty: stop the partition's ingest and close
    /// its tenants' stores.
    fn settle(&self, partition: u32) -> BoxFuture<'static, ()>;
}

/// Names of the fleet's buckets for a prefix.
pub fn bucket_names(prefix: &str) -> (String, String) {
    let suffix = name_suffix(prefix);
    (
        format!("TENANTVEC_FLEET{suffix}"),
        format!("TENANTVEC_LEASES{suffix}"),
    )
}

/// What every worker of a prefix must agree on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetConfig {
    pub partitions: u32,
    pub backend: String,
    pub layout: String,
}

/// A live worker, as it describes itself in `member.<name>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub member: String,
    pub host: String,
    pub pid: u32,
    pub backend: String,
    /// The data folder (edge), as this worker names it.
    pub folder: String,
    /// The data folder's identity (edge): a random id kept in the folder
    /// itself, so two workers agree exactly when they see one folder (one
    /// machine, or one volume mounted into several containers).
    #[serde(default)]
    pub folder_id: String,
    /// Leaving: no partition is assigned to it any more.
    pub draining: bool,
    /// The partitions it serves, as of its last renewal.
    pub serving: Vec<u32>,
    /// Partitions it is handing over (gate closed, settling).
    pub releasing: Vec<u32>,
}

/// The running membership; [`Fleet::leave`] hands every partition over,
/// [`Fleet::close`] stops watching the fleet.
pub struct Fleet {
    leave: CancellationToken,
    left: tokio::sync::watch::Receiver<bool>,
    close: CancellationToken,
    task: JoinHandle<()>,
}

/// Join the fleet: check the settings against it, and take part from now
/// on. Fails with a message naming the disagreement when this worker cannot
/// be one of them.
pub async fn join(
    client: async_nats::Client,
    settings: &Settings,
    backend: &str,
    cluster: Arc<Cluster>,
    partitions: Arc<dyn Partitions>,
) -> anyhow::Result<Fleet> {
    // A renewal that waits longer than a tick is better tried again at the
    // next one than waited for while the lease runs out.
    let js = jetstream::context::ContextBuilder::new()
        .timeout(settings.cluster.tick())
        .build(client.clone());
    let (fleet_bucket, lease_bucket) = bucket_names(&settings.storage_prefix());
    let replicas = settings.nats.replicas;
    let ttl = settings.cluster.lease_ttl;
    let layout = settings.store.layout.name().to_owned();
    let ours = FleetConfig {
        partitions: settings.cluster.partitions,
        backend: backend.to_owned(),
        layout: layout.clone(),
    };
    let fleet = open_bucket(&js, &fleet_bucket, Duration::ZERO, replicas).await?;
    agree(&fleet, &ours).await?;
    let leases = open_bucket(&js, &lease_bucket, ttl, replicas).await?;
    let status = leases
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read bucket {lease_bucket}: {e}"))?;
    anyhow::ensure!(
        status.max_age() == ttl,
        "setting cluster.lease_ttl is {}, but the fleet's leases (bucket {lease_bucket}) last {}; \
         every worker of a prefix must agree",
        humantime::format_duration(ttl),
        humantime::format_duration(status.max_age()),
    );
    let me = Member {
        member: cluster.member.clone(),
        host: host_name(),
        pid: std::process::id(),
        backend: backend.to_owned(),
        folder: if backend == "edge" {
            folder_of(settings)
        } else {
            String::new()
        },
        folder_id: if backend == "edge" {
            folder_id(&settings.store.folder)?
        } else {
            String::new()
        },
        draining: false,
        serving: Vec::new(),
        releasing: Vec::new(),
    };
    if backend == "edge" {
        for other in read_members(&leases).await? {
            anyhow::ensure!(
                other.folder_id == me.folder_id,
                "worker {} of prefix {:?} keeps its edge stores in {} on host {}, this one in {} on \
                 host {}, and they are not the same folder: with the edge store every worker of a \
                 prefix shares one data folder (one machine, or one volume) (use the qdrant \
                 backend for workers on several machines)",
                other.member,
                settings.nats.prefix,
                other.folder,
                other.host,
                me.folder,
                me.host
            );
        }
    }
    let key = member_key(&me.member);
    leases
        .create(&key, json(&me))
        .await
        .map_err(|e| match crate::registry::is_taken(&e) {
            true => anyhow::anyhow!(
                "another live worker of prefix {:?} is named {:?} (cluster.member); names must be unique",
                settings.nats.prefix,
                me.member
            ),
            false => anyhow::anyhow!("cannot join the fleet (bucket {lease_bucket}): {e}"),
        })?;
    let nudges = client
        .subscribe(format!("{}._fleet.nudge.*", settings.nats.prefix))
        .await?;
    tracing::info!(
        member = %me.member,
        partitions = ours.partitions,
        lease_ttl = ?ttl,
        "joined the fleet"
    );
    let leave = CancellationToken::new();
    let me_name = me.member.clone();
    let run = Run {
        client,
        leases,
        cluster,
        partitions,
        me,
        tick: settings.cluster.tick(),
        ttl,
        settle_limit: settings.worker.shutdown_timeout,
        nudge_subject: format!("{}._fleet.nudge.{}", settings.nats.prefix, me_name),
        held: BTreeMap::new(),
        settling: BTreeSet::new(),
        releasing: None,
    };
    let close = CancellationToken::new();
    let (left_tx, left) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run.run(nudges, leave.clone(), left_tx, close.clone()));
    Ok(Fleet {
        leave,
        left,
        close,
        task,
    })
}

impl Fleet {
    /// Leave the fleet: stop taking partitions, hand each held one over
    /// (drained, settled, lease deleted), then remove this worker's record.
    /// Bounded by `limit`; what is left then expires with its lease.
    pub async fn leave(&mut self, limit: Duration) {
        self.leave.cancel();
        if tokio::time::timeout(limit, self.left.wait_for(|left| *left))
            .await
            .is_err()
        {
            tracing::warn!(
                ?limit,
                "partitions not handed over in time; their leases expire by themselves"
            );
        }
    }

    /// Stop following the fleet. Until then a worker that has left still
    /// reads who owns what, for the requests it forwards while its endpoint
    /// drains.
    pub async fn close(self) {
        self.close.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn member_key(name: &str) -> String {
    format!("member.{name}")
}

fn lease_key(partition: u32) -> String {
    format!("lease.{partition}")
}

fn json<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value).unwrap_or_default().into()
}

/// The host's name, for the messages of the edge store's one-folder rule
/// and for made-up member names.
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The identity of the data folder `root`: the id in its
/// `.tenantvec-folder-id` file, made by the first worker that looks (made
/// aside and linked in, so two workers starting at once agree on one).
fn folder_id(root: &std::path::Path) -> anyhow::Result<String> {
    let path = root.join(".tenantvec-folder-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_owned());
    }
    std::fs::create_dir_all(root)
        .map_err(|e| anyhow::anyhow!("cannot create the data folder {}: {e}", root.display()))?;
    let id = nuid::next().to_string();
    let aside = root.join(format!(".tenantvec-folder-id.{id}"));
    std::fs::write(&aside, &id)
        .map_err(|e| anyhow::anyhow!("cannot write in the data folder {}: {e}", root.display()))?;
    // A link fails if the name exists: then the other worker's id counts.
    let _ = std::fs::hard_link(&aside, &path);
    let _ = std::fs::remove_file(&aside);
    std::fs::read_to_string(&path)
        .map(|id| id.trim().to_owned())
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

fn folder_of(settings: &Settings) -> String {
    let folder = &settings.store.folder;
    std::fs::canonicalize(folder)
        .unwrap_or_else(|_| folder.clone())
        .display()
        .to_string()
}

async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: bucket.to_owned(),
        description: "tenantvec fleet".into(),
        history: 1,
        max_age,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot create bucket {bucket} (JetStream is needed for cluster.enabled): {e}"
        )
    })
}

/// Record `ours` as the fleet's settings, or check ours against those
/// recorded.
async fn agree(fleet: &kv::Store, ours: &FleetConfig) -> anyhow::Result<()> {
    match fleet.create("config", json(ours)).await {
        Ok(_) => return Ok(()),
        Err(e) if crate::registry::is_taken(&e) => {}
        Err(e) => anyhow::bail!("cannot record the fleet's settings: {e}"),
    }
    let theirs: FleetConfig = fleet
        .get("config")
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the fleet's settings: {e}"))?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| anyhow::anyhow!("the fleet's settings record is unreadable"))?;
    let differ = |what: &str, mine: String, fleet: String| {
        anyhow::anyhow!(
            "setting {what} is {mine}, but this prefix's fleet uses {fleet}; every worker of a \
             prefix must agree (changing cluster.partitions needs an export and import of every \
             tenant into a new prefix)"
        )
    };
    if theirs.partitions != ours.partitions {
        return Err(differ(
            "cluster.partitions",
            ours.partitions.to_string(),
            theirs.partitions.to_string(),
        ));
    }
    if theirs.backend != ours.backend {
        return Err(differ(
            "store.backend",
            ours.backend.clone(),
            theirs.backend,
        ));
    }
    if theirs.layout != ours.layout {
        return Err(differ("store.layout", ours.layout.clone(), theirs.layout));
    }
    Ok(())
}

/// The fleet of `prefix` as its buckets say, for `tenantvec cluster`.
pub async fn describe(
    client: &async_nats::Client,
    prefix: &str,
) -> anyhow::Result<serde_json::Value> {
    let js = jetstream::new(client.clone());
    let (fleet_bucket, lease_bucket) = bucket_names(prefix);
    let no_fleet = |e| {
        anyhow::anyhow!(
            "no fleet on prefix {prefix:?} (bucket {fleet_bucket}: {e}); is a worker running with cluster.enabled?"
        )
    };
    let fleet = js.get_key_value(&fleet_bucket).await.map_err(no_fleet)?;
    let config: FleetConfig = fleet
        .get("config")
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| anyhow::anyhow!("the fleet's settings record is missing"))?;
    let leases = js.get_key_value(&lease_bucket).await?;
    let mut members = read_members(&leases).await?;
    members.sort_by(|a, b| a.member.cmp(&b.member));
    let owners = read_owners(&leases, config.partitions).await?;
    let unowned: Vec<u32> = (0..config.partitions)
        .filter(|p| owners[*p as usize].is_none())
        .collect();
    Ok(serde_json::json!({
        "config": config,
        "lease_ttl_seconds": leases.status().await?.max_age().as_secs_f64(),
        "members": members,
        "owners": owners,
        "unowned": unowned,
    }))
}

/// Every live member's record.
pub async fn read_members(leases: &kv::Store) -> anyhow::Result<Vec<Member>> {
    let mut keys = leases
        .keys()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the fleet's members: {e}"))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        if let Some(name) = key.ok().as_deref().and_then(|k| k.strip_prefix("member.")) {
            names.push(name.to_owned());
        }
    }
    let records = join_all(names.iter().map(|n| leases.get(member_key(n)))).await;
    Ok(records
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect())
}

/// The owner of every partition, from the leases. A read may come from a
/// replica a write has not reached yet: good for routing and display, never
/// for a decision about a lease (those are compare-and-set writes).
pub async fn read_owners(
    leases: &kv::Store,
    partitions: u32,
) -> anyhow::Result<Vec<Option<String>>> {
    let entries = join_all((0..partitions).map(|p| leases.entry(lease_key(p)))).await;
    entries
        .into_iter()
        .map(|e| {
            e.map(|e| {
                e.filter(|e| e.operation == kv::Operation::Put)
                    .map(|e| String::from_utf8_lossy(&e.value).into_owned())
            })
            .map_err(|e| anyhow::anyhow!("cannot read the leases: {e}"))
        })
        .collect()
}
