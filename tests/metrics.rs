//! The Prometheus endpoint against a real Prometheus: `promtool check
//! metrics` accepts the worker's output, a Prometheus started here scrapes
//! the worker and answers queries over known traffic with the right figures,
//! and every metric the Grafana dashboard names is one the worker exports.
//!
//! Prometheus and promtool are Debian's `prometheus` package (scripts/setup
//! installs it), or PROMETHEUS_BIN / PROMTOOL_BIN. Without them the tests
//! that need them print why and pass, except under CI=true, where they fail.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, project_dir, vector, Harness};
use serde_json::{json, Value};
use tenantvec::protocol::{AdminVerb, ErrorCode, Verb};

const DIM: usize = 8;
/// Known traffic: this many searches that succeed, this many refused.
const SEARCHES: usize = 20;
const BAD: usize = 3;

/// A tool by its environment variable or on PATH; `None` (after saying why,
/// or failing under CI=true) when it is not there.
fn tool(name: &str, var: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    });
    if path.is_none() {
        let why = format!(
            "{name} not found ({var} unset, not on PATH): install Debian's prometheus package \
             (scripts/setup does)"
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
    }
    path
}

/// One HTTP/1.0 GET on the loopback; the status and the body.
fn http_get(port: u16, target: &str) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// A worker with its metrics on a free port, and that port.
async fn harness() -> (Harness, u16) {
    let port = free_port();
    let h = Harness::start_with(|s| s.metrics.listen = format!("127.0.0.1:{port}")).await;
    (h, port)
}

/// The known traffic: one upsert, [`SEARCHES`] searches, [`BAD`] refused
/// searches. Returns the longest search as the client saw it.
async fn traffic(h: &Harness) -> Duration {
    let docs: Vec<Value> = (0..10)
        .map(|i| json!({"doc_id": format!("d{i}"), "vector": vector(i, DIM)}))
        .collect();
    h.ok(Verb::Upsert, "alice", json!({ "documents": docs }))
        .await;
    let mut longest = Duration::ZERO;
    for i in 0..SEARCHES {
        let start = Instant::now();
        h.ok(
            Verb::Search,
            "alice",
            json!({"vector": vector(100 + i as u64, DIM), "top_k": 3}),
        )
        .await;
        longest = longest.max(start.elapsed());
    }
    for _ in 0..BAD {
        h.fails(
            Verb::Search,
            "alice",
            json!({"vector": "not a vector"}),
            ErrorCode::BadRequest,
        )
        .await;
    }
    longest
}

/// The value of the one sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no sample {series}"))
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("sample {series} is not a number"))
}

/// The `(le, cumulative count)` buckets of one histogram series.
fn buckets(text: &str, name: &str, labels: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{{labels},le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let (le, value) = rest.split_once("\"} ").expect("a bucket line");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, value.parse().unwrap())
        })
        .collect()
}

/// Prometheus's `histogram_quantile` over cumulative buckets (linear
/// interpolation inside the bucket the rank falls in; the `+Inf` bucket
/// answers the largest finite bound).
fn quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().expect("buckets").1;
    let rank = q * total;
    let b = buckets[..buckets.len() - 1]
        .iter()
        .position(|(_, count)| *count >= rank)
        .unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    let (start, below) = if b == 0 { (0.0, 0.0) } else { buckets[b - 1] };
    let (end, count) = buckets[b];
    start + (end - start) * ((rank - below) / (count - below))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_worker_and_answers_over_known_traffic() {
    let (Some(promtool), Some(prometheus)) = (
        tool("promtool", "PROMTOOL_BIN"),
        tool("prometheus", "PROMETHEUS_BIN"),
    ) else {
        return;
    };
    let (h, port) = harness().await;
    let longest = traffic(&h).await;
    let text = scrape(port);

    // promtool's checks of the exposition format and its naming rules.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The worker's own figures over the known traffic.
    let ok = r#"tenantvec_requests_total{verb="search",code="ok"}"#;
    let bad = r#"tenantvec_requests_total{verb="search",code="bad_request"}"#;
    assert_eq!(sample(&text, ok), SEARCHES as f64);
    assert_eq!(sample(&text, bad), BAD as f64);
    let search = buckets(
        &text,
        "tenantvec_request_duration_seconds",
        r#"verb="search""#,
    );
    assert_eq!(search.last().unwrap().1, (SEARCHES + BAD) as f64);
    let p99 = quantile(0.99, &search);
    // The worker's time of a request is within the client's round trip.
    let ceiling = search
        .iter()
        .map(|(le, _)| *le)
        .find(|le| *le >= longest.as_secs_f64())
        .unwrap();
    assert!(
        p99 > 0.0 && p99 <= ceiling,
        "p99 {p99}s, longest round trip {longest:?}"
    );
    let stats = h.admin(AdminVerb::Stats, json!({})).await;
    assert_eq!(stats["errors"]["bad_request"], BAD as u64, "{stats}");
    assert_eq!(stats["errors"]["internal"], 0, "{stats}");

    // A Prometheus of our own scrapes it every 250ms.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 250ms\n  evaluation_interval: 250ms\n\
             scrape_configs:\n  - job_name: tenantvec\n    static_configs:\n      \
             - targets: [\"127.0.0.1:{port}\"]\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let _prometheus = Running(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start prometheus"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = |q: &str| -> Option<f64> {
        let (status, body) = http_get(web, &format!("/api/v1/query?query={}", encode(q))).ok()?;
        if status != 200 {
            return None;
        }
        let reply: Value = serde_json::from_str(&body).ok()?;
        reply["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    };
    let wait_for = |q: &str| -> f64 {
        loop {
            if let Some(v) = query(q) {
                return v;
            }
            assert!(Instant::now() < deadline, "Prometheus never answered {q}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    tokio::task::block_in_place(|| {
        assert_eq!(wait_for(ok), SEARCHES as f64);
        assert_eq!(wait_for(bad), BAD as f64);
        assert_eq!(
            wait_for(r#"sum(tenantvec_requests_total{code!="ok"})"#),
            BAD as f64
        );
        let p99_prometheus = wait_for(
            r#"histogram_quantile(0.99, sum by (le) (tenantvec_request_duration_seconds_bucket{verb="search"}))"#,
        );
        assert!(
            (p99_prometheus - p99).abs() <= 1e-9 * p99.max(1.0),
            "Prometheus's p99 {p99_prometheus}, the worker's buckets say {p99}"
        );
        assert_eq!(wait_for("tenantvec_pool_active"), 1.0);
        assert_eq!(wait_for("tenantvec_pool_misses_total"), 1.0);
        assert!(wait_for("process_resident_memory_bytes") > 1e6);
    });
}

/// The Prometheus scrape config of the monitoring profile is valid.
#[test]
fn the_monitoring_profile_s_prometheus_config_is_valid() {
    let Some(promtool) = tool("promtool", "PROMTOOL_BIN") else {
        return;
    };
    let config = project_dir().join("config/prometheus/prometheus.yml");
    let out = Command::new(promtool)
        .args(["check", "config", "--syntax-only"])
        .arg(&config)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric named in the dashboard's queries is one the worker exports
/// (with ingest on, as by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_names_is_exported() {
    let (h, port) = harness().await;
    traffic(&h).await;
    let text = scrape(port);
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let named = dashboard_metrics(&project_dir().join("config/grafana/tenantvec.json"));
    assert!(
        named.len() >= 8,
        "too few metrics found in the dashboard: {named:?}"
    );
    let missing: Vec<&String> = named
        .iter()
        .filter(|m| !exported.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard names metrics the worker does not export: {missing:?}"
    );
}

/// The metric names in every `expr` of a dashboard: identifiers that are
/// not PromQL functions, keywords or label names.
fn dashboard_metrics(path: &Path) -> BTreeSet<String> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "no expr in {}", path.display());
    let mut names = BTreeSet::new();
    for expr in exprs {
        // Label matchers and grouping lists name labels, not metrics.
        let mut stripped = String::new();
        let mut depth = 0;
        for c in expr.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ if depth == 0 => stripped.push(c),
                _ => {}
            }
        }
        let stripped = strip_groupings(&stripped);
        for token in stripped.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        {
            let is_name = token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && !token.starts_with("$")
                && (token.starts_with("tenantvec_") || token.starts_with("process_"));
            if is_name {
                names.insert(token.to_owned());
            }
        }
    }
    names
}

/// `by (…)` and `without (…)` lists removed.
fn strip_groupings(expr: &str) -> String {
    let mut out = expr.to_owned();
    for keyword in ["by", "without"] {
        while let Some(at) = find_keyword(&out, keyword) {
            let rest = &out[at + keyword.len()..];
            let open = rest.find('(').map(|i| at + keyword.len() + i);
            let close = open.and_then(|o| out[o..].find(')').map(|i| o + i));
            match (open, close) {
                (Some(_), Some(close)) => out.replace_range(at..=close, " "),
                _ => break,
            }
        }
    }
    out
}

fn find_keyword(expr: &str, keyword: &str) -> Option<usize> {
    let bytes = expr.as_bytes();
    expr.match_indices(keyword).map(|(i, _)| i).find(|&i| {
        let before = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let after = expr[i + keyword.len()..].trim_start().starts_with('(');
        before && after
    })
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// A metrics.listen that cannot be served stops the start, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_address_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nats = common::NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut s = common::settings(&nats.url(), data.path());
    s.metrics.listen = taken.local_addr().unwrap().to_string();
    let worker = tenantvec::worker::spawn(s);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !worker.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the worker started on a taken metrics address"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = worker.stop().unwrap_err().to_string();
    assert!(
        e.contains("metrics.listen") && e.contains(&s_addr(&taken)),
        "{e}"
    );
}

fn s_addr(l: &std::net::TcpListener) -> String {
    l.local_addr().unwrap().to_string()
}

/// Percent-encoding of a query parameter.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A child process killed when the test ends, also when it fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The registry's census: tenants by state and by documents, in
/// `admin.stats` and in `/metrics`, with no tenant named in either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_census_counts_tenants_by_state_and_size() {
    let (h, port) = harness().await;
    for (tenant, n) in [("alice", 10u64), ("bob", 150)] {
        let docs: Vec<Value> = (0..n)
            .map(|i| json!({"doc_id": format!("d{i}"), "vector": vector(i, DIM)}))
            .collect();
        h.ok(Verb::Upsert, tenant, json!({ "documents": docs }))
            .await;
    }
    tenantvec::client::tenants::one(
        &h.client,
        tenantvec::protocol::TenantsOp::Create,
        "carol",
        Some(Default::default()),
    )
    .await
    .unwrap();
    // Closing writes each tenant's figures into its record.
    h.admin(AdminVerb::Evict, json!({})).await;
    h.ok(Verb::Count, "alice", json!({})).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let registry = loop {
        let stats = h.admin(AdminVerb::Stats, json!({})).await;
        let registry = stats["registry"].clone();
        if registry["complete"] == json!(true) && registry["documents_total"] == json!(160) {
            break registry;
        }
        assert!(
            Instant::now() < deadline,
            "census never complete: {stats:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(registry["tenants"], 3, "{registry:#}");
    assert_eq!(
        registry["states"],
        json!({"idle": 2, "active": 1, "dropping": 0, "moving": 0}),
        "{registry:#}"
    );
    assert_eq!(registry["documents_unknown"], 1, "carol never closed");
    let per: Vec<(Value, Value)> = registry["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["le"].clone(), b["tenants"].clone()))
        .collect();
    assert_eq!(per[1], (json!(10), json!(1)), "alice: {registry:#}");
    assert_eq!(per[3], (json!(1000), json!(1)), "bob: {registry:#}");

    let text = scrape(port);
    assert_eq!(sample(&text, "tenantvec_registry_complete"), 1.0);
    assert_eq!(
        sample(&text, r#"tenantvec_registry_tenants{state="active"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"tenantvec_registry_tenants{state="idle"}"#),
        2.0
    );
    assert_eq!(
        sample(&text, "tenantvec_registry_tenant_documents_count"),
        2.0
    );
    assert_eq!(
        sample(&text, "tenantvec_registry_tenant_documents_sum"),
        160.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tenantvec_registry_tenant_documents_bucket{le="10"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "tenantvec_registry_tenants_size_unknown"),
        1.0
    );
    for tenant in ["alice", "bob", "carol"] {
        assert!(!text.contains(tenant), "a tenant named in /metrics");
    }
}

/// Two workers on one host with the default metrics address (a second
/// worker started to scale out): the second finds the default port taken
/// and serves on one of the next ones, saying so in its log, instead of
/// refusing to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_default_metrics_port_moves_to_the_next_free_one() {
    let default = tenantvec::config::Settings::defaults().metrics.listen;
    let port: u16 = default.rsplit(':').next().unwrap().parse().unwrap();
    // Taken here, or by someone already: taken either way.
    let _first = std::net::TcpListener::bind(("127.0.0.1", port));
    let nats = common::NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut s = common::settings(&nats.url(), data.path());
    s.metrics.listen = default;
    let worker = tenantvec::worker::spawn(s.clone());
    common::wait_ready(&s, || worker.is_finished()).await;
    let served = (port + 1..=port + 16).find(|p| {
        http_get(*p, "/metrics")
            .is_ok_and(|(status, body)| status == 200 && body.contains("tenantvec_pool_active"))
    });
    assert!(
        served.is_some(),
        "no worker's /metrics on the ports after {port}"
    );
    worker.stop().unwrap();
}
