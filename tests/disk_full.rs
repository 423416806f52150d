//! A disk that fails under a tenant's store: the write fails with an error,
//! the process lives on, other tenants are served, and what was acknowledged
//! before is read back once there is room again.
//!
//! Two ways a disk fails. Out of inodes (no file can be made, the files that
//! exist still take writes): the engine's writes succeed and its flush
//! fails, with a panic; if that panic escaped the store, the second flush in
//! the engine's `Drop` would abort this test binary, which is the failure
//! caught. Out of space: a write through the engine's memory-mapped files
//! would be a SIGBUS, so the store refuses writes before the disk is full.
//! That guard covers the worker's own writes, not a disk another process
//! fills to its last byte: the engine then still writes a page into each
//! WAL segment it makes ahead, on a thread of its own, and that is a SIGBUS
//! (docs/storage.md, "The embedded store and its costs"). So the test that fills by
//! bytes leaves a few pages free, as the guard would.
//!
//! Needs small filesystems of its own to fill: tmpfs, mounted here, which
//! takes root. Without it the tests print why and pass as skipped, except
//! under `CI=true`, where they fail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Map;
use tenantvec::config::{Layout, Settings};
use tenantvec::protocol::ErrorCode;
use tenantvec::store::edge::EdgeFactory;
use tenantvec::store::{Record, SearchQuery, StoreFactory, TenantStore};
use tenantvec::tenant::TenantId;

/// Mount options of a tmpfs whose inodes run out long before its space.
const INODES_ONLY: &str = "size=64m,nr_inodes=2000";
/// Mount options of a tmpfs whose space runs out.
const SMALL: &str = "size=8m";

/// A tmpfs on a temp dir; unmounted on drop.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// `None`, after saying why, when no tmpfs can be mounted here.
    fn mount(test: &str, options: &str) -> Option<Self> {
        let skip = |why: String| {
            let msg = format!("{test}: SKIPPED, {why}; this test needs root to mount a tmpfs");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{msg} (failing: CI=true)"
            );
            eprintln!("\n!!! {msg}\n");
            None
        };
        let uid = Command::new("id").arg("-u").output();
        match uid {
            Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == "0" => {}
            Ok(out) => {
                return skip(format!(
                    "not root (uid {})",
                    String::from_utf8_lossy(&out.stdout).trim()
                ))
            }
            Err(e) => return skip(format!("cannot run `id -u`: {e}")),
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self { dir: Some(dir) }),
            Ok(out) => skip(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => skip(format!("cannot run mount: {e}")),
        }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("mounted")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            // Lazy: a store leaked after a failed flush still holds files
            // open in it.
            let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
        }
    }
}

/// Create empty files in `dir` until the filesystem has no inode left.
fn use_up_inodes(dir: &Path) {
    std::fs::create_dir(dir).expect("filler folder");
    for i in 0.. {
        match std::fs::File::create(dir.join(i.to_string())) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => return, // ENOSPC
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
}

/// `store.min_free_disk_mb` of these tests: their filesystems are small.
const MIN_FREE_MB: u64 = 1;

/// Pages left free by `fill`: fewer than `MIN_FREE_MB`, more than the
/// engine's background WAL segment creation touches.
const LEFT_FREE: u64 = 256 * 1024;

/// Bytes and inodes an unprivileged writer may still use under `dir`.
fn room(dir: &Path) -> (u64, u64) {
    let st = rustix::fs::statvfs(dir).expect("statvfs");
    (st.f_bavail.saturating_mul(st.f_frsize), st.f_favail)
}

/// Write to `path` until the filesystem has `LEFT_FREE` bytes left. It never
/// reaches its last byte, not even for a moment: the engine's background
/// WAL segment creation may be running (see the module's note).
fn fill(path: &Path) {
    let dir = path.parent().expect("filler's folder");
    let mut file = std::fs::File::create(path).expect("filler file");
    let chunk = vec![0xA5u8; 64 * 1024];
    loop {
        let left = room(dir).0.saturating_sub(LEFT_FREE);
        if left == 0 {
            break;
        }
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
        match file.write_all(&chunk[..n]).and_then(|()| file.sync_all()) {
            Ok(()) => {}
            // Something else took the last of it: the disk is full enough.
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    assert!(
        room(dir).0 < MIN_FREE_MB << 20,
        "filled below min_free_disk_mb"
    );
}

/// Wait until what the test removed is free again: the kernel frees an
/// unlinked file when its last holder closes it, and a process another test
/// is spawning can hold this one's files for a moment between its fork and
/// its exec.
fn wait_for_room(dir: &Path, bytes: u64, inodes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (b, i) = room(dir);
        if b >= bytes && i >= inodes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} still has only {b} bytes and {i} inodes free 10 s after the filler was removed",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn settings(root: &Path, layout: Layout) -> Settings {
    let mut s = Settings::defaults();
    s.store.folder = root.to_owned();
    s.store.dimension = 4;
    s.store.layout = layout;
    s.store.min_free_disk_mb = MIN_FREE_MB;
    s
}

fn docs(prefix: &str, n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            doc_id: format!("{prefix}{i}"),
            text: Some(format!("{prefix} {i} {}", "x".repeat(2000))),
            metadata: Map::new(),
            vector: vec![1.0, i as f32, 0.5, 0.25],
        })
        .collect()
}

fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.doc_id.clone()).collect()
}

/// Upsert batches into `store` until one fails; return the ids acknowledged
/// on the way and the error.
fn upsert_until_it_fails(
    store: &mut dyn TenantStore,
) -> (Vec<String>, tenantvec::protocol::ServiceError) {
    let mut acked = Vec::new();
    for round in 0..50 {
        let batch = docs(&format!("late{round}-"), 50);
        match store.upsert(batch.clone()) {
            Ok(()) => acked.extend(ids(&batch)),
            Err(e) => return (acked, e),
        }
    }
    panic!("50 upserts on a full disk all succeeded");
}

/// A tenant outside the full disk is served as usual.
fn another_tenant_works(root: &Path) {
    let f = EdgeFactory::new(&settings(root, Layout::PerTenant)).unwrap();
    let mut s = f.open(&TenantId::parse("elsewhere").unwrap());
    s.upsert(docs("e", 3)).unwrap();
    assert_eq!(s.count(None).unwrap(), 3);
    let hits = s
        .search(&SearchQuery {
            vector: vec![1.0, 2.0, 0.5, 0.25],
            top_k: 1,
            filter: None,
            with_vectors: false,
        })
        .unwrap();
    assert_eq!(hits[0].doc_id, "e2");
    s.close().unwrap();
}

/// Every id in `want` is readable in `store`.
fn all_readable(store: &mut dyn TenantStore, want: &[String]) {
    let got = store.get(want, false).unwrap();
    assert_eq!(got.len(), want.len(), "acknowledged documents lost");
}

#[test]
fn a_flush_that_fails_is_an_error_not_a_crash() {
    let Some(fs) = Tmpfs::mount("a_flush_that_fails_is_an_error_not_a_crash", INODES_ONLY) else {
        return;
    };
    let elsewhere = tempfile::tempdir().unwrap();
    let root: PathBuf = fs.path().join("data");
    let f: Arc<dyn StoreFactory> =
        Arc::new(EdgeFactory::new(&settings(&root, Layout::PerTenant)).unwrap());
    let t = TenantId::parse("full").unwrap();
    let mut store = f.open(&t);
    let early = docs("early", 20);
    store.upsert(early.clone()).unwrap();
    let mut acked = ids(&early);

    // No file can be made any more, while there is room in the files that
    // exist: the engine's writes succeed, its flush does not.
    use_up_inodes(&fs.path().join("filler"));
    let (late, err) = upsert_until_it_fails(&mut *store);
    acked.extend(late);
    assert_eq!(err.code, ErrorCode::Internal, "{}", err.message);
    assert!(err.message.contains("disk"), "{}", err.message);
    assert!(err.message.contains("No space left"), "{}", err.message);
    assert!(err.message.len() < 1000, "the backtrace is for the log");
    // The same store again, no room yet: an error or an answer from disk,
    // never a crash.
    let _ = store.count(None);
    let _ = store.upsert(docs("more", 5));
    // Dropped without close: a broken shard must not flush (and panic) here.
    drop(store);

    another_tenant_works(elsewhere.path());

    std::fs::remove_dir_all(fs.path().join("filler")).unwrap();
    wait_for_room(fs.path(), 0, 1000);
    let mut again = f.open(&t);
    all_readable(&mut *again, &acked);
    again.upsert(docs("after", 3)).unwrap();
    assert!(again.count(None).unwrap() >= acked.len() + 3);
    again.close().unwrap();
}

/// The shared shard broken by a failed flush fails every tenant's requests
/// until the worker restarts (here: a new factory); then what was
/// acknowledged is there.
#[test]
fn a_broken_shared_store_fails_every_tenant_until_restart() {
    let Some(fs) = Tmpfs::mount(
        "a_broken_shared_store_fails_every_tenant_until_restart",
        INODES_ONLY,
    ) else {
        return;
    };
    let root: PathBuf = fs.path().join("data");
    let f = EdgeFactory::new(&settings(&root, Layout::Shared)).unwrap();
    let (a, b) = (
        TenantId::parse("alpha").unwrap(),
        TenantId::parse("beta").unwrap(),
    );
    let mut alpha = f.open(&a);
    let mut beta = f.open(&b);
    let early = docs("early", 10);
    alpha.upsert(early.clone()).unwrap();
    beta.upsert(docs("b", 2)).unwrap();
    let mut acked = ids(&early);

    use_up_inodes(&fs.path().join("filler"));
    let (late, err) = upsert_until_it_fails(&mut *alpha);
    acked.extend(late);
    assert_eq!(err.code, ErrorCode::Internal, "{}", err.message);
    let err = beta.count(None).unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal, "{}", err.message);
    drop((alpha, beta, f));

    std::fs::remove_dir_all(fs.path().join("filler")).unwrap();
    wait_for_room(fs.path(), 0, 1000);
    let f = EdgeFactory::new(&settings(&root, Layout::Shared)).unwrap();
    let mut alpha = f.open(&a);
    all_readable(&mut *alpha, &acked);
    assert_eq!(f.open(&b).count(None).unwrap(), 2);
}

/// A disk filled by someone else to less than `store.min_free_disk_mb`:
/// writes are refused before the engine touches it, the shard stays usable,
/// and writes work again once space is freed, with nothing acknowledged
/// lost.
#[test]
fn writes_are_refused_before_the_disk_is_full() {
    let Some(fs) = Tmpfs::mount("writes_are_refused_before_the_disk_is_full", SMALL) else {
        return;
    };
    let root: PathBuf = fs.path().join("data");
    let f = EdgeFactory::new(&settings(&root, Layout::PerTenant)).unwrap();
    let t = TenantId::parse("full").unwrap();
    let mut store = f.open(&t);
    let early = docs("early", 20);
    store.upsert(early.clone()).unwrap();

    fill(&fs.path().join("filler"));
    let err = store.upsert(docs("late", 5)).unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal, "{}", err.message);
    assert!(err.message.contains("min_free_disk_mb"), "{}", err.message);
    // A new tenant's shard is not created either.
    let mut new = f.open(&TenantId::parse("new").unwrap());
    let err = new.upsert(docs("n", 1)).unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal, "{}", err.message);
    // Reads go on.
    all_readable(&mut *store, &ids(&early));

    std::fs::remove_file(fs.path().join("filler")).unwrap();
    wait_for_room(fs.path(), 4 << 20, 0);
    store.upsert(docs("after", 3)).unwrap();
    assert_eq!(store.count(None).unwrap(), 23);
    store.close().unwrap();
}
