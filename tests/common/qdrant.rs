//! A real Qdrant server for the tests of the qdrant backend: the one named by
//! `QDRANT_URL` (its gRPC port), or none, and then those tests are skipped
//! with the reason printed. Each test gets its own collection prefix, and a
//! guard deletes every collection under it on drop. [`Proxy`] stands between
//! a worker and the server to cut and restore the connection; it forwards
//! bytes and never answers for Qdrant.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use qdrant_client::Qdrant;

/// The Qdrant server under test, or why there is none (printed once per test).
pub fn url() -> Result<String, &'static str> {
    match std::env::var("QDRANT_URL") {
        Ok(u) if !u.trim().is_empty() => Ok(u.trim().to_owned()),
        _ => Err("QDRANT_URL is not set (a Qdrant server's gRPC URL, e.g. http://127.0.0.1:6334)"),
    }
}

/// The API key of the server under test (`QDRANT_API_KEY`), if it wants one.
pub fn api_key() -> Option<String> {
    std::env::var("QDRANT_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
}

/// Point `settings` at the server under test: its URL (or `url`, a proxy
/// in front of it), its API key, and `space`'s collections.
pub fn configure(settings: &mut tenantvec::config::Settings, url: &str, space: &Space) {
    settings.store.qdrant_url = url.to_owned();
    settings.store.collection_prefix = space.prefix.clone();
    if let Some(key) = api_key() {
        settings.store.qdrant_api_key = tenantvec::config::Secret::new(key);
    }
}

/// The server under test, or `None` after printing why `test` is skipped.
pub fn url_or_skip(test: &str) -> Option<String> {
    match url() {
        Ok(u) => Some(u),
        Err(reason) => {
            skip(test, reason);
            None
        }
    }
}

/// Print why a qdrant test does not run. Shown with `--nocapture`;
/// `scripts/test` prints the same once for the whole suite.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
}

/// A collection prefix no other test (or run) uses; its collections are
/// deleted when this is dropped, also when the test fails.
pub struct Space {
    pub url: String,
    pub prefix: String,
}

impl Space {
    pub fn new(url: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let prefix = format!(
            "tvtest{}x{nanos}x{}_",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            url: url.to_owned(),
            prefix,
        }
    }

    /// A prefix for a test whose server does not exist: nothing to clean up.
    pub fn unused() -> Self {
        Self {
            url: String::new(),
            prefix: "tv_".into(),
        }
    }

    /// Names of the collections under this prefix, as the server lists them.
    pub fn collections(&self) -> Vec<String> {
        with_client(&self.url, |c| async move {
            c.list_collections().await.map(|r| {
                r.collections
                    .into_iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
            })
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&self.prefix))
        .collect()
    }
}

impl Space {
    /// Make collection `<prefix><suffix>` by hand: `dim` cosine vectors, no
    /// payload index (what a worker stopped half-way would leave).
    pub fn create_bare(&self, suffix: &str, dim: u64) {
        use qdrant_client::qdrant::{CreateCollectionBuilder, Distance, VectorParamsBuilder};
        let name = format!("{}{suffix}", self.prefix);
        with_client(&self.url, |c| async move {
            c.create_collection(
                CreateCollectionBuilder::new(name)
                    .vectors_config(VectorParamsBuilder::new(dim, Distance::Cosine)),
            )
            .await
        })
        .expect("create a collection by hand");
    }

    /// The payload index of `key` in `<prefix><suffix>`, as the server
    /// describes it (`None` if there is none).
    pub fn payload_index(&self, suffix: &str, key: &str) -> Option<String> {
        let name = format!("{}{suffix}", self.prefix);
        let info = with_client(&self.url, |c| async move { c.collection_info(name).await })
            .expect("collection info");
        let schema = info.result?.payload_schema;
        schema.get(key).map(|s| format!("{s:?}"))
    }
}

impl Space {
    /// Every stored payload of every collection under this prefix, as text
    /// (the server's own view of what it holds).
    pub fn payloads(&self) -> String {
        use qdrant_client::qdrant::ScrollPointsBuilder;
        let mut out = String::new();
        for name in self.collections() {
            let points = with_client(&self.url, |c| async move {
                c.scroll(
                    ScrollPointsBuilder::new(name)
                        .limit(10_000)
                        .with_payload(true),
                )
                .await
            })
            .expect("scroll a collection");
            for p in points.result {
                out.push_str(&format!("{:?}\n", p.payload));
            }
        }
        out
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        if self.url.is_empty() {
            return;
        }
        for name in self.collections() {
            let _ = with_client(
                &self.url,
                |c| async move { c.delete_collection(name).await },
            );
        }
    }
}

/// Run one call of a fresh client on a throwaway runtime in a thread of its
/// own, so that sync and async tests alike can use it.
fn with_client<T, F>(
    url: &str,
    call: impl FnOnce(Qdrant) -> F + Send,
) -> Result<T, qdrant_client::QdrantError>
where
    T: Send,
    F: std::future::Future<Output = Result<T, qdrant_client::QdrantError>>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let client = Qdrant::from_url(url)
                    .api_key(api_key())
                    .skip_compatibility_check()
                    .build()?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(call(client))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A TCP forwarder on a free loopback port to `target`, that can cut every
/// connection and refuse new ones ([`Proxy::cut`]), or hold every byte while
/// keeping connections open ([`Proxy::stall`]: a server that hangs), and let
/// them through again ([`Proxy::restore`]).
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forward to the host:port of `url` (an http:// URL).
    pub fn to(url: &str) -> Self {
        let target = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(true));
        let stalled = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, l, s, h) = (open.clone(), live.clone(), stop.clone(), stalled.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(inbound) = inbound else { continue };
                if !o.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut live = l.lock().unwrap_or_else(|p| p.into_inner());
                for s in [&inbound, &outbound] {
                    if let Ok(c) = s.try_clone() {
                        live.push(c);
                    }
                }
                pipe(&inbound, &outbound, &h);
                pipe(&outbound, &inbound, &h);
            }
        });
        Self {
            addr,
            open,
            stalled,
            live,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Close every connection through the proxy and refuse new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Hold every byte in both directions; connections stay open.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copy `from` to `to` on a thread until either side closes, holding the
/// bytes while `stalled` is set.
fn pipe(from: &TcpStream, to: &TcpStream, stalled: &Arc<AtomicBool>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let stalled = stalled.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    while stalled.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
