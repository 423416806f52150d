//! NATS TLS and NKey authentication, proven against a real nats-server the
//! test starts with certificates it makes itself (rcgen): the worker checks
//! the server's certificate against `nats.tls_ca_file`, presents its own for
//! mutual TLS, refuses a server signed by another CA with a clear error, and
//! authenticates with an NKey seed.

mod common;

use std::path::Path;

use common::NatsServer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::json;
use tenantvec::client::Client;
use tenantvec::config::{Secret, Settings};
use tenantvec::protocol::Verb;

/// A CA: its certificate's PEM and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A certificate for `names` signed by `ca`: (certificate PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca.issuer)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// A nats-server with TLS (and `verify`: client certificates required).
fn tls_server(dir: &Path, ca: &Ca, verify: bool) -> NatsServer {
    let (cert, key) = leaf(ca, &["localhost", "127.0.0.1"]);
    let conf = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  timeout: 5\n}}\n",
        write(dir, "server.pem", &cert),
        write(dir, "server-key.pem", &key),
        write(dir, "ca.pem", &ca.pem),
    );
    NatsServer::start_with_config(dir.join("nats.conf").tap_write(&conf))
}

trait TapWrite {
    fn tap_write(self, body: &str) -> Self;
}

impl TapWrite for std::path::PathBuf {
    fn tap_write(self, body: &str) -> Self {
        std::fs::write(&self, body).unwrap();
        self
    }
}

fn settings(server: &NatsServer, data: &Path) -> Settings {
    let mut s = common::settings(&format!("tls://127.0.0.1:{}", server.port), data);
    s.nats.discovery_timeout = std::time::Duration::from_millis(300);
    s
}

/// The worker serves over the connection `s` describes, and a client with
/// the same settings reaches it.
async fn serves(s: &Settings) {
    let worker = tenantvec::worker::spawn(s.clone());
    common::wait_ready(s, || worker.is_finished()).await;
    let client = Client::connect(s).await.expect("client over TLS");
    let doc = json!({"documents": [{"doc_id": "a", "text": "over tls"}]});
    client.tenant(Verb::Upsert, "alice", &doc).await.unwrap();
    let count = client
        .tenant(Verb::Count, "alice", &json!({}))
        .await
        .unwrap();
    assert_eq!(count["count"], 1);
    worker.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_servers_ca_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let ca = ca("tenantvec test CA");
    let server = tls_server(dir.path(), &ca, true);
    let mut s = settings(&server, data.path());
    s.nats.tls_ca_file = write(dir.path(), "client-ca.pem", &ca.pem).into();

    // Without a client certificate, the server (verify: true) refuses.
    let refused = tenantvec::transport::connect(&s.nats).await;
    assert!(refused.is_err(), "connected without a client certificate");

    let (cert, key) = leaf(&ca, &["tenantvec-worker"]);
    s.nats.tls_cert_file = write(dir.path(), "client.pem", &cert).into();
    s.nats.tls_key_file = write(dir.path(), "client-key.pem", &key).into();
    serves(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_ca_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = tls_server(dir.path(), &ca("the server's CA"), false);
    let mut s = settings(&server, data.path());
    let other = ca("another CA");
    s.nats.tls_ca_file = write(dir.path(), "other-ca.pem", &other.pem).into();
    let error = tenantvec::transport::connect(&s.nats)
        .await
        .expect_err("a server signed by another CA");
    let text = format!("{error:#}");
    assert!(text.contains("cannot connect to NATS"), "{text}");
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "the error should say it is the certificate: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let conf = format!(
        "authorization {{\n  users: [ {{ nkey: \"{}\" }} ]\n}}\n",
        user.public_key()
    );
    let server = NatsServer::start_with_config(dir.path().join("nats.conf").tap_write(&conf));
    let mut s = common::settings(&server.url(), data.path());
    s.nats.discovery_timeout = std::time::Duration::from_millis(300);
    // No key: refused.
    assert!(tenantvec::transport::connect(&s.nats).await.is_err());
    // Another key: refused.
    s.nats.nkey_seed = Secret::new(nkeys::KeyPair::new_user().seed().unwrap());
    assert!(tenantvec::transport::connect(&s.nats).await.is_err());
    s.nats.nkey_seed = Secret::new(user.seed().unwrap());
    serves(&s).await;
}
