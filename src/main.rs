//! The `tenantvec` command: `serve` runs the worker; the other subcommands
//! are a client of a running worker. Thin by design: parsing and printing
//! only, the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

mod bench;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tenantvec::client::{backup, tenants};
use tenantvec::client::{Client, ClientError};
use tenantvec::config::{Overrides, Settings};
use tenantvec::protocol::{AdminVerb, TenantsOp, Verb};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "tenantvec",
    version,
    about = "A multi-tenant vector store worker over NATS"
)]
struct Cli {
    /// Settings file (TOML) layered over the defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// NATS server URL (overrides NATS_URL).
    #[arg(long, global = true, value_name = "URL")]
    nats_url: Option<String>,
    /// Subject prefix (overrides TENANTVEC_PREFIX).
    #[arg(long, global = true)]
    prefix: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Write a new master key (32 random bytes) to a new file of mode 0600
    /// and print its fingerprint.
    New {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the fingerprint of a master key file (encryption.master_key_file
    /// unless given).
    Fingerprint {
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Wrap every tenant's data key again under a new master key (the data
    /// is untouched); opens them with encryption.master_key_file. Stop the
    /// workers first and start them with the new key after; run it again
    /// after an interruption: it takes up what is left.
    RotateMaster {
        /// The new master key's file (`tenantvec keys new --out FILE`).
        #[arg(long, value_name = "FILE")]
        new: PathBuf,
    },
    /// A new data key for one tenant (a suspected leak): its data encrypted
    /// again with it by the worker that serves it, and the old key erased.
    /// Backups and dead letters of the tenant from before no longer open.
    Rotate { tenant: String },
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker until SIGTERM or SIGINT.
    Serve {
        /// Data root (overrides VECTOR_STORE_FOLDER).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Most tenant actors alive at once (overrides VECTOR_STORE_POOL_SIZE).
        #[arg(long)]
        pool_size: Option<usize>,
        /// Idle time before an actor stops, e.g. 3600 or "1h" (overrides VECTOR_STORE_TTL_SECONDS).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Upload a docs.jsonl file (one document per line) to a tenant.
    Upsert {
        #[arg(long)]
        tenant: String,
        file: PathBuf,
    },
    /// Publish a docs.jsonl file to the durable ingest stream (JetStream):
    /// to one tenant, or with --all-tenants to the tenant each line names.
    Ingest {
        #[arg(long, required_unless_present = "all_tenants")]
        tenant: Option<String>,
        /// Route each line to the tenant in its "tenant" field.
        #[arg(long, conflicts_with = "tenant")]
        all_tenants: bool,
        file: PathBuf,
        /// Return once JetStream has stored every message, without waiting for the worker.
        #[arg(long)]
        no_wait: bool,
    },
    /// Search a tenant by text, or by vector with --vector.
    Search {
        #[arg(long)]
        tenant: String,
        /// Metadata filter as JSON, e.g. '{"category": "health"}'.
        #[arg(long)]
        filter: Option<String>,
        #[arg(long)]
        top_k: Option<usize>,
        /// Query vector as a JSON array instead of query text.
        #[arg(long, conflicts_with = "query")]
        vector: Option<String>,
        query: Option<String>,
    },
    /// Count a tenant's documents, optionally those matching a filter.
    Count {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        filter: Option<String>,
    },
    /// Erase a tenant: every document and file.
    Drop {
        #[arg(long)]
        tenant: String,
    },
    /// Pool statistics of a worker.
    Stats,
    /// The tenant registry: list, show, create, change and delete tenants.
    Tenants {
        #[command(subcommand)]
        action: TenantsAction,
    },
    /// Encryption keys (docs/encryption.md).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The fleet of a prefix (cluster.enabled): its settings, its members
    /// with the partitions each serves and hands over, and every
    /// partition's owner, as the leases say. With regions: every region,
    /// its workers and its tenants' count.
    Cluster,
    /// The dead-letter records of the ingest stream (without their bodies);
    /// `deadletters replay` publishes them to ingest again.
    Deadletters {
        /// Only this tenant's records.
        #[arg(long)]
        tenant: Option<String>,
        #[command(subcommand)]
        action: Option<DeadletterAction>,
    },
    /// Export a tenant (documents with their vectors) as JSON lines to FILE,
    /// or to stdout; the summary goes to stderr then.
    Export {
        #[arg(long)]
        tenant: String,
        file: Option<PathBuf>,
        /// With encryption: write the export in clear, opened here with the
        /// master key (encryption.master_key_file), to move a tenant to
        /// another deployment. The worker still seals it; the plaintext is
        /// only ever in FILE.
        #[arg(long)]
        plaintext: bool,
    },
    /// Replace a tenant's documents with an export file.
    Import {
        #[arg(long)]
        tenant: String,
        file: PathBuf,
        /// Embed the texts again with the worker's embedder instead of
        /// keeping the file's vectors (another model, another dimension).
        #[arg(long)]
        re_embed: bool,
    },
    /// Back a tenant up into the NATS Object Store bucket (TENANTVEC_BACKUP),
    /// or with --all every tenant of the registry.
    Backup {
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        tenant: Option<String>,
        /// Every tenant of the registry (resumable: the same command with
        /// the same --name skips the tenants done).
        #[arg(long)]
        all: bool,
        /// The backup's name; the UTC time by default.
        #[arg(long)]
        name: Option<String>,
        /// With --all: only tenants whose id starts with this.
        #[arg(long, value_name = "PREFIX", requires = "all")]
        id_prefix: Option<String>,
        /// With --all: tenants backed up at once.
        #[arg(long, default_value_t = tenantvec::client::backup_all::DEFAULT_PARALLEL)]
        parallel: usize,
    },
    /// Replace a tenant's documents with one of its backups, or with --all
    /// every tenant's that has one.
    Restore {
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        tenant: Option<String>,
        /// Every tenant with a backup in the bucket (of --at's name, if
        /// given); resumable with the same --run.
        #[arg(long)]
        all: bool,
        /// Restore into this tenant instead.
        #[arg(long = "as", value_name = "TENANT", conflicts_with = "all")]
        into: Option<String>,
        /// The backup's name; the newest by default.
        #[arg(long, value_name = "NAME")]
        at: Option<String>,
        /// With --all: the run's name, marking the tenants it restored (a
        /// rerun with it skips them); --at's name or the UTC time by default.
        #[arg(long, value_name = "NAME", requires = "all")]
        run: Option<String>,
        /// With --all: only tenants whose id starts with this.
        #[arg(long, value_name = "PREFIX", requires = "all")]
        id_prefix: Option<String>,
        /// With --all: tenants restored at once.
        #[arg(long, default_value_t = tenantvec::client::backup_all::DEFAULT_PARALLEL)]
        parallel: usize,
        #[arg(long)]
        re_embed: bool,
    },
    /// The backups in the bucket, of one tenant or all.
    Backups {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Print the NATS server configuration (`mappings`) that request
    /// partitions need, for the prefix in use (nats.request_partitions).
    NatsMappings {
        /// Partitions (overrides TENANTVEC_REQUEST_PARTITIONS).
        #[arg(long)]
        partitions: Option<usize>,
    },
    /// Benchmark a worker (started here as a child process) on a workload
    /// folder: ingest, Zipf search with 1 and C clients, warm search.
    Bench {
        #[command(flatten)]
        options: bench::BenchOptions,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TenantsAction {
    /// Every tenant (page by page), or those whose id starts with
    /// --id-prefix (--prefix is the subject prefix of every command).
    List {
        #[arg(long, value_name = "PREFIX")]
        id_prefix: Option<String>,
        /// Only tenants in this state: idle, active or dropping.
        #[arg(long)]
        state: Option<String>,
        /// Records asked for per request (1..=1000).
        #[arg(long, default_value_t = 500)]
        page: usize,
        /// The records as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A tenant's record.
    Show { tenant: String },
    /// Create a tenant, with settings as key=value (top_k, max_documents, max_rps).
    Create {
        tenant: String,
        settings: Vec<String>,
        /// With regions: the tenant's home region (by default the region
        /// of the worker that answers: the one of the NATS URL given).
        #[arg(long)]
        region: Option<String>,
        /// With regions: its disaster-recovery region (its backups are
        /// copied there; `tenants failover` restores it there).
        #[arg(long)]
        dr_region: Option<String>,
    },
    /// Change a tenant's settings (key=value; key=default puts one back to
    /// the worker's default); it holds from the tenant's next request.
    Set {
        tenant: String,
        #[arg(required_unless_present = "dr_region")]
        settings: Vec<String>,
        /// With regions: its disaster-recovery region ("" for none).
        #[arg(long)]
        dr_region: Option<String>,
    },
    /// Erase a tenant: its data (as drop) and its record.
    Delete { tenant: String },
    /// With regions: move a tenant's home to another region (its data
    /// copied there, the record flipped, the old copy erased; its writes
    /// wait meanwhile).
    Move {
        tenant: String,
        #[arg(long)]
        region: String,
    },
    /// With regions, against the tenant's DR region when its home region
    /// is gone: restore it there from its latest backup, as its new home.
    /// Writes after that backup are lost (docs/regions.md).
    Failover { tenant: String },
    /// Make the record of every tenant of this machine's data folder
    /// (store.folder) written before the registry, from its tenant.json and
    /// embedder.json; run where the worker's data is. A worker does the same
    /// for one tenant when it first opens it.
    ImportFiles,
}

#[derive(Subcommand)]
enum DeadletterAction {
    /// Publish each record's original message to its ingest subject again
    /// (after the cause is fixed), removing the record once stored.
    Replay {
        /// Only this tenant's records.
        #[arg(long)]
        tenant: Option<String>,
        /// Only the record at this sequence of the dead-letter stream.
        #[arg(long)]
        seq: Option<u64>,
    },
}

fn main() -> ExitCode {
    // The crash tests' binary: the points its FAILPOINTS switches on.
    #[cfg(feature = "failpoints")]
    let _crash_points = fail::FailScenario::setup();
    let cli = Cli::parse();
    let mut overrides: Overrides = Vec::new();
    if let Some(url) = &cli.nats_url {
        overrides.push(("nats.url", json!(url)));
    }
    match (&cli.prefix, &cli.command) {
        (Some(prefix), _) => overrides.push(("nats.prefix", json!(prefix))),
        // The benchmark's worker gets a prefix of its own, so a worker
        // already serving the default prefix does not collide with it.
        (None, Command::Bench { .. }) => overrides.push(("nats.prefix", json!("tvbench"))),
        (None, _) => {}
    }
    if let Command::Serve {
        data,
        pool_size,
        ttl,
    } = &cli.command
    {
        if let Some(d) = data {
            overrides.push(("store.folder", json!(d)));
        }
        if let Some(n) = pool_size {
            overrides.push(("pool.size", json!(n)));
        }
        if let Some(t) = ttl {
            overrides.push(("pool.ttl", json!(t)));
        }
    }
    let settings = match Settings::load(cli.config.as_deref(), overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // The worker logs at log.filter; a client command only warns, unless
    // RUST_LOG asks for more, so its stdout and stderr stay readable.
    let is_serve = matches!(cli.command, Command::Serve { .. });
    let client_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tenantvec::init_tracing(if is_serve {
        &settings.log.filter
    } else {
        &client_filter
    });

    if let Command::NatsMappings { partitions } = cli.command {
        let n = partitions.unwrap_or(settings.nats.request_partitions);
        if !(1..=64).contains(&n) {
            eprintln!(
                "error: request partitions must be 1..=64 (--partitions, or \
                 nats.request_partitions), not {n}"
            );
            return ExitCode::from(2);
        }
        print!(
            "{}",
            tenantvec::transport::partitions::server_config(&settings.nats.prefix, n)
        );
        return ExitCode::SUCCESS;
    }
    if let Command::Keys {
        action: action @ (KeysAction::New { .. } | KeysAction::Fingerprint { .. }),
    } = &cli.command
    {
        let done = match action {
            KeysAction::New { out } => tenantvec::crypto::MasterKey::generate().and_then(|key| {
                key.write_new(out)?;
                Ok(format!(
                    "master key {} written to {} (mode 0600): keep a copy apart from the data",
                    key.fingerprint(),
                    out.display()
                ))
            }),
            KeysAction::Fingerprint { file } => {
                let path = file
                    .clone()
                    .unwrap_or(settings.encryption.master_key_file.clone());
                tenantvec::crypto::MasterKey::load(&path).map(|k| k.fingerprint().to_owned())
            }
            KeysAction::RotateMaster { .. } | KeysAction::Rotate { .. } => {
                unreachable!("matched above")
            }
        };
        return match done {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Serve { .. } = cli.command {
        return match tenantvec::worker::run_blocking(settings, CancellationToken::new(), true) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }

    // The benchmark gets a multi-thread runtime, so its concurrent clients
    // are not limited by one thread of the measuring side.
    let mut builder = match cli.command {
        Command::Bench { .. } => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(client_command(cli.command, &settings)) {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run a client command; its output as printed on success.
async fn client_command(command: Command, settings: &Settings) -> Result<String, ClientError> {
    let pretty = |value: Value| serde_json::to_string_pretty(&value).unwrap_or_default();
    if let Command::Bench { options, json } = command {
        let report = bench::run(settings, &options)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        return Ok(match json {
            true => report.to_string(),
            false => bench::table(&report).trim_end().to_owned(),
        });
    }
    if let Command::Tenants {
        action:
            TenantsAction::List {
                id_prefix,
                state,
                page,
                json: false,
            },
    } = &command
    {
        let client = Client::connect(settings).await?;
        let records = tenants::list(&client, id_prefix.as_deref(), state.as_deref(), *page).await?;
        return Ok(tenants::table(&records));
    }
    if let Command::Tenants {
        action: TenantsAction::ImportFiles,
    } = &command
    {
        return import_files(settings).await.map(pretty);
    }
    if let Command::Keys {
        action: KeysAction::RotateMaster { new },
    } = &command
    {
        return rotate_master(settings, new).await.map(pretty);
    }
    if let Command::Export { file: None, .. } = &command {
        // The export is on stdout: the summary goes to stderr.
        eprintln!("{}", pretty(request_command(command, settings).await?));
        return Ok(String::new());
    }
    request_command(command, settings).await.map(pretty)
}

/// The keyring of the master key in `file`, for the settings' prefix.
fn keyring(
    settings: &Settings,
    file: &std::path::Path,
) -> anyhow::Result<tenantvec::crypto::Keyring> {
    let master = tenantvec::crypto::MasterKey::load(file)?;
    Ok(tenantvec::crypto::Keyring::new(
        master,
        &settings.nats.prefix,
    ))
}

/// The prefix's key store, reached through `client`.
async fn key_store(
    settings: &Settings,
    client: &Client,
) -> anyhow::Result<tenantvec::registry::keys::KeyStore> {
    tenantvec::registry::keys::KeyStore::open(
        &async_nats::jetstream::new(client.nats().clone()),
        &settings.storage_prefix(),
        settings.nats.replicas,
    )
    .await
}

/// `export --plaintext`: the tenant's data key, opened with the master key.
async fn tenant_data_key(
    settings: &Settings,
    client: &Client,
    tenant: &tenantvec::tenant::TenantId,
) -> Result<tenantvec::crypto::DataKey, ClientError> {
    let keys = tenantvec::registry::keys::Keys {
        keyring: keyring(settings, &settings.encryption.master_key_file)?,
        store: key_store(settings, client).await?,
    };
    keys.existing(tenant.as_str())
        .await
        .map_err(ClientError::Service)?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "tenant {tenant} has no data key: its exports are not sealed; \
                 export without --plaintext"
            )
            .into()
        })
}

/// `keys rotate-master`: every record's data key under the new master key.
async fn rotate_master(settings: &Settings, new: &std::path::Path) -> Result<Value, ClientError> {
    let old = keyring(settings, &settings.encryption.master_key_file)?;
    let new = keyring(settings, new)?;
    if old.fingerprint() == new.fingerprint() {
        return Err(anyhow::anyhow!(
            "the new master key is the one in use ({})",
            old.fingerprint()
        )
        .into());
    }
    let client = Client::connect(settings).await?;
    let store = key_store(settings, &client).await?;
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(std::time::Duration::from_millis(200));
    let summary = tenantvec::registry::rotate::rotate_master(&store, &old, &new, |s| {
        progress.set_message(format!(
            "{} wrapped again, {} done before, {} failed",
            s.rewrapped,
            s.already,
            s.failed.len()
        ))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    progress.finish_and_clear();
    let failed = summary.failed.len();
    let mut summary = serde_json::to_value(&summary).map_err(|e| anyhow::anyhow!("{e}"))?;
    summary["from"] = json!(old.fingerprint());
    summary["to"] = json!(new.fingerprint());
    if failed > 0 {
        return Err(anyhow::anyhow!(
            "{summary:#}\n{failed} tenants failed; run it again to retry them"
        )
        .into());
    }
    Ok(summary)
}

/// `tenants import-files`: the data folder's tenants into the registry.
async fn import_files(settings: &Settings) -> Result<Value, ClientError> {
    use tenantvec::config::{Backend, Layout};
    use tenantvec::tenant::TenantPaths;
    let client = Client::connect(settings).await?;
    let registry = tenantvec::registry::Registry::open(
        &async_nats::jetstream::new(client.nats().clone()),
        &settings.storage_prefix(),
        settings.nats.replicas,
    )
    .await?
    .in_region(settings.worker.region());
    let folder = &settings.store.folder;
    let records = tenantvec::embed::record::Records::new(
        TenantPaths::new(folder),
        settings.store.backend == Backend::Edge && settings.store.layout == Layout::PerTenant,
    );
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(std::time::Duration::from_millis(200));
    let summary = tenantvec::registry::import::import_files(
        &registry,
        &TenantPaths::new(folder),
        &records,
        |s| {
            progress.set_message(format!(
                "{}: {} imported, {} registered already, {} failed",
                folder.display(),
                s.imported,
                s.registered,
                s.failed.len()
            ))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot read the data folder {}: {e}", folder.display()))?;
    progress.finish_and_clear();
    let failed = summary.failed.len();
    let summary = serde_json::to_value(&summary).map_err(|e| anyhow::anyhow!("{e}"))?;
    if failed > 0 {
        return Err(anyhow::anyhow!(
            "{summary:#}\n{failed} tenants failed; run it again to retry them"
        )
        .into());
    }
    Ok(summary)
}

async fn request_command(command: Command, settings: &Settings) -> Result<Value, ClientError> {
    // The tenant rule is checked before anything is sent (or connected).
    let tenant = match &command {
        Command::Upsert { tenant, .. }
        | Command::Search { tenant, .. }
        | Command::Count { tenant, .. }
        | Command::Drop { tenant }
        | Command::Keys {
            action: KeysAction::Rotate { tenant },
        }
        | Command::Export { tenant, .. }
        | Command::Import { tenant, .. } => Some(tenant.as_str()),
        Command::Backup { tenant, .. } | Command::Restore { tenant, .. } => tenant.as_deref(),
        Command::Backups { tenant } => tenant.as_deref(),
        Command::Ingest { tenant, .. } => tenant.as_deref(),
        Command::Deadletters {
            action: Some(DeadletterAction::Replay { tenant, .. }),
            ..
        }
        | Command::Deadletters { tenant, .. } => tenant.as_deref(),
        _ => None,
    };
    if let Some(tenant) = tenant {
        tenantvec::client::check_tenant(tenant)?;
    }
    let client = Client::connect(settings).await?;
    match command {
        Command::Serve { .. }
        | Command::Bench { .. }
        | Command::NatsMappings { .. }
        | Command::Keys {
            action: KeysAction::New { .. } | KeysAction::Fingerprint { .. },
        }
        | Command::Keys {
            action: KeysAction::RotateMaster { .. },
        } => {
            unreachable!("handled before")
        }
        Command::Keys {
            action: KeysAction::Rotate { tenant },
        } => {
            // It copies the tenant's data: as long as an import may take.
            client
                .request_timeout(
                    client.subjects().tenant(Verb::Rekey, &tenant),
                    "{}".into(),
                    std::time::Duration::from_secs(6 * 3600),
                )
                .await
        }
        Command::Upsert { tenant, file } => {
            client
                .upsert_file(&tenant, &file, settings.limits.max_documents)
                .await
        }
        Command::Ingest {
            tenant,
            file,
            no_wait,
            ..
        } => {
            client
                .ingest_file(
                    tenant.as_deref(),
                    &file,
                    settings.limits.max_documents,
                    !no_wait,
                )
                .await
        }
        Command::Search {
            tenant,
            filter,
            top_k,
            vector,
            query,
        } => {
            let mut body = serde_json::Map::new();
            match (query, vector) {
                (Some(q), None) => {
                    body.insert("query".into(), json!(q));
                }
                (None, Some(v)) => {
                    body.insert("vector".into(), parse_json("--vector", &v)?);
                }
                _ => {
                    return Err(anyhow::anyhow!("give a query text or --vector").into());
                }
            }
            if let Some(f) = filter {
                body.insert("filter".into(), parse_json("--filter", &f)?);
            }
            if let Some(k) = top_k {
                body.insert("top_k".into(), json!(k));
            }
            client
                .tenant(Verb::Search, &tenant, &Value::Object(body))
                .await
        }
        Command::Count { tenant, filter } => {
            let body = match filter {
                Some(f) => json!({ "filter": parse_json("--filter", &f)? }),
                None => json!({}),
            };
            client.tenant(Verb::Count, &tenant, &body).await
        }
        Command::Drop { tenant } => client.tenant(Verb::Drop, &tenant, &json!({})).await,
        Command::Stats => client.admin(AdminVerb::Stats, &json!({})).await,
        Command::Tenants { action } => match action {
            TenantsAction::List {
                id_prefix,
                state,
                page,
                ..
            } => tenants::list(&client, id_prefix.as_deref(), state.as_deref(), page)
                .await
                .map(Value::Array),
            TenantsAction::Show { tenant } => {
                tenants::one(&client, TenantsOp::Show, &tenant, None).await
            }
            TenantsAction::Create {
                tenant,
                settings,
                region,
                dr_region,
            } => {
                let settings = tenants::parse_settings(&settings)?;
                let regions = tenants::Regions {
                    home: region,
                    dr: dr_region,
                };
                tenants::create(&client, &tenant, settings, regions).await
            }
            TenantsAction::Set {
                tenant,
                settings,
                dr_region,
            } => {
                let settings = tenants::parse_settings(&settings)?;
                tenants::set(&client, &tenant, settings, dr_region).await
            }
            TenantsAction::Failover { tenant } => tenants::failover(&client, &tenant).await,
            TenantsAction::Delete { tenant } => {
                tenants::one(&client, TenantsOp::Delete, &tenant, None).await
            }
            TenantsAction::Move { tenant, region } => {
                tenants::move_to(&client, &tenant, &region).await
            }
            TenantsAction::ImportFiles => unreachable!("handled before"),
        },
        Command::Cluster if settings.worker.region().is_some() => {
            tenantvec::client::regions::describe(&client).await
        }
        Command::Cluster => {
            tenantvec::cluster::fleet::describe(client.nats(), &settings.storage_prefix())
                .await
                .map_err(Into::into)
        }
        Command::Export {
            tenant,
            file,
            plaintext,
        } => {
            let tenant = tenantvec::client::check_tenant(&tenant)?;
            let opener = match plaintext {
                true => Some(tenant_data_key(settings, &client, &tenant).await?),
                false => None,
            };
            backup::export(&client, &tenant, file.as_deref(), opener).await
        }
        Command::Import {
            tenant,
            file,
            re_embed,
        } => {
            let tenant = tenantvec::client::check_tenant(&tenant)?;
            backup::import(&client, &tenant, &file, re_embed).await
        }
        Command::Backup {
            tenant: None,
            name,
            id_prefix,
            parallel,
            ..
        } => {
            tenantvec::client::backup_all::backup_all(
                &client,
                name.as_deref(),
                id_prefix.as_deref(),
                parallel,
            )
            .await
        }
        Command::Backup {
            tenant: Some(tenant),
            name,
            ..
        } => {
            let tenant = tenantvec::client::check_tenant(&tenant)?;
            backup::backup(&client, &tenant, name.as_deref()).await
        }
        Command::Restore {
            tenant: None,
            at,
            run,
            id_prefix,
            parallel,
            re_embed,
            ..
        } => {
            tenantvec::client::backup_all::restore_all(
                &client,
                tenantvec::client::backup_all::RestoreAll {
                    at: at.as_deref(),
                    run: run.as_deref(),
                    id_prefix: id_prefix.as_deref(),
                    parallel,
                    re_embed,
                },
            )
            .await
        }
        Command::Restore {
            tenant: Some(tenant),
            into,
            at,
            re_embed,
            ..
        } => {
            let tenant = tenantvec::client::check_tenant(&tenant)?;
            let into = into
                .as_deref()
                .map(tenantvec::client::check_tenant)
                .transpose()?;
            backup::restore(&client, &tenant, into.as_ref(), at.as_deref(), re_embed).await
        }
        Command::Backups { tenant } => {
            let tenant = tenant
                .as_deref()
                .map(tenantvec::client::check_tenant)
                .transpose()?;
            backup::list(&client, tenant.as_ref()).await
        }
        Command::Deadletters { tenant, action } => {
            let parse = |t: Option<String>| {
                t.as_deref()
                    .map(tenantvec::client::check_tenant)
                    .transpose()
            };
            match action {
                None => tenantvec::client::deadletter::list(&client, parse(tenant)?.as_ref()).await,
                Some(DeadletterAction::Replay { tenant: t, seq }) => {
                    let t = parse(t.or(tenant))?;
                    tenantvec::client::deadletter::replay(&client, t.as_ref(), seq).await
                }
            }
        }
    }
}

fn parse_json(flag: &str, text: &str) -> Result<Value, ClientError> {
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{flag} is not valid JSON: {e}").into())
}
