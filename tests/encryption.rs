//! Per-tenant encryption at rest (docs/encryption.md), on a real ext4
//! filesystem with the `encrypt` feature that each test makes in an image
//! file and loop-mounts: what a tenant wrote is nowhere in the image in
//! clear, an idle tenant's files cannot be read (ENOKEY) nor their names
//! seen, the master key opens everything again after a restart and another
//! one is refused with nothing lost, a tenant written before encryption is
//! encrypted by its next open, keys a crashed worker left in the filesystem
//! are removed by the next start, and the ioctl structs are the kernel's.
//!
//! Mounting takes root (`mkfs.ext4`, `mount -o loop`); without it the tests
//! say why and pass as skipped, except under `CI=true`, where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Harness;
use serde_json::{json, Value};
use tenantvec::config::Settings;
use tenantvec::crypto::MasterKey;
use tenantvec::protocol::Verb;

/// The text written in clear by the tests, searched for in the image.
const MARKER: &str = "zebra-marker-5f1c9e2a health note";
const ENOKEY: i32 = 126;

/// Say why a test cannot run: loudly, and as a failure under `CI=true`.
fn skip(test: &str, why: &str) {
    let msg = format!("{test}: SKIPPED, {why}");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg} (failing: CI=true)"
    );
    eprintln!("\n!!! {msg}\n");
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// An ext4 filesystem in an image file, loop-mounted; unmounted on drop.
struct Ext4 {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Ext4 {
    /// A new 96 MiB ext4 (`-O encrypt` when `encrypt`), mounted; `None`
    /// after saying why when this machine cannot.
    fn make(test: &str, encrypt: bool) -> Option<Self> {
        if unsafe { libc::geteuid() } != 0 {
            skip(
                test,
                "it mounts an ext4 image (loop device), which takes root",
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(96 << 20))
            .expect("image file");
        // /usr/sbin may not be on a non-login shell's PATH.
        let mkfs_bin = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mkfs.ext4");
        let mut mkfs = Command::new(mkfs_bin);
        mkfs.arg("-q").arg("-F");
        if encrypt {
            mkfs.args(["-O", "encrypt"]);
        }
        if let Err(e) = run(mkfs.arg(&image)) {
            skip(test, &format!("mkfs.ext4 failed: {e}"));
            return None;
        }
        let mut fs = Self {
            dir,
            mounted: false,
        };
        std::fs::create_dir(fs.mount_point()).unwrap();
        if let Err(e) = fs.mount() {
            skip(test, &format!("cannot loop-mount an ext4 image: {e}"));
            return None;
        }
        Some(fs)
    }

    fn image(&self) -> PathBuf {
        self.dir.path().join("fs.img")
    }

    fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn data(&self) -> PathBuf {
        self.mount_point().join("data")
    }

    fn mount(&mut self) -> Result<(), String> {
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(self.image())
            .arg(self.mount_point()))?;
        self.mounted = true;
        Ok(())
    }

    fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        for _ in 0..50 {
            if run(Command::new("umount").arg(self.mount_point())).is_ok() {
                self.mounted = false;
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = run(Command::new("umount").arg("-l").arg(self.mount_point()));
        self.mounted = false;
    }

    /// Whether the image's raw bytes hold `needle` (the filesystem unmounted,
    /// so that every block is on it).
    fn image_holds(&mut self, needle: &[u8]) -> bool {
        self.unmount();
        let raw = std::fs::read(self.image()).expect("read the image");
        self.mount().expect("mount again");
        raw.windows(needle.len()).any(|w| w == needle)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A worker process, killed when the test ends (also when it fails).
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        common::kill(&mut self.0);
    }
}

fn master_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    MasterKey::generate().unwrap().write_new(&path).unwrap();
    path
}

/// A worker with encryption on, on an encrypted ext4 image of its own,
/// with a new master key (kept in `keys`).
struct Encrypted {
    fs: Ext4,
    keys: tempfile::TempDir,
    key: PathBuf,
    h: Harness,
}

impl Encrypted {
    /// `None` when `test` cannot make the image (it said why).
    async fn start(test: &str) -> Option<Self> {
        let fs = Ext4::make(test, true)?;
        let keys = tempfile::tempdir().unwrap();
        let key = master_key(keys.path(), "master.key");
        let h = Harness::start_with(|s| encrypted(s, &fs, &key)).await;
        Some(Self { fs, keys, key, h })
    }
}

fn encrypted(s: &mut Settings, fs: &Ext4, key: &Path) {
    s.store.folder = fs.data();
    s.encryption.enabled = true;
    s.encryption.master_key_file = key.to_owned();
}

/// Three documents with the marker text and vectors far from zero.
fn docs() -> Value {
    let docs: Vec<Value> = (0..3)
        .map(|i| {
            json!({
                "doc_id": format!("note-{i}"),
                "text": format!("{MARKER} {i}"),
                "metadata": {"kind": "note"},
                "vector": common::vector(40 + i, 8),
            })
        })
        .collect();
    json!({ "documents": docs })
}

/// The first 4 floats of a stored vector, as bytes on disk.
fn vector_bytes(h: &Harness, stored: &Value) -> Vec<u8> {
    let _ = h;
    let v = stored["documents"][0]["vector"].as_array().expect("vector");
    v.iter()
        .take(4)
        .flat_map(|x| (x.as_f64().unwrap() as f32).to_le_bytes())
        .collect()
}

/// Every file below `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            match e.file_type().unwrap().is_dir() {
                true => stack.push(p),
                false => out.push(p),
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_is_unreadable_at_rest_and_opens_again_with_its_master_key() {
    let test = "a_tenant_is_unreadable_at_rest_and_opens_again_with_its_master_key";
    let Some(Encrypted {
        mut fs,
        keys,
        key,
        mut h,
    }) = Encrypted::start(test).await
    else {
        return;
    };
    h.ok(Verb::Upsert, "alice", docs()).await;
    let stored = h
        .ok(
            Verb::Get,
            "alice",
            json!({"doc_ids": ["note-0"], "with_vectors": true}),
        )
        .await;
    let needle_vector = vector_bytes(&h, &stored);
    h.stop_worker().unwrap();

    // Stopped: the tenant's key is out of the filesystem.
    let store = fs.data().join("alice").join("vector_store");
    let stored_files = files(&store);
    assert!(!stored_files.is_empty());
    for f in &stored_files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for plain in [
            "wal",
            "segments",
            "shard_config.json",
            "payload_storage",
            "vector_storage",
        ] {
            assert!(
                !name.contains(plain),
                "a file name is in clear: {}",
                f.display()
            );
        }
        let err = std::fs::read(f).expect_err("an encrypted file was read without its key");
        assert_eq!(err.raw_os_error(), Some(ENOKEY), "{}: {err}", f.display());
    }
    // The raw image holds neither the text nor the vectors.
    assert!(
        !fs.image_holds(MARKER.as_bytes()),
        "the marker text is in the image"
    );
    assert!(
        !fs.image_holds(&needle_vector),
        "a stored vector is in the image"
    );

    // Restart with the master key: everything as before.
    h.start_worker().await;
    let found = h
        .ok(
            Verb::Search,
            "alice",
            json!({"vector": common::vector(41, 8), "top_k": 1}),
        )
        .await;
    assert_eq!(found["results"][0]["doc_id"], "note-1", "{found}");
    assert_eq!(found["results"][0]["text"], format!("{MARKER} 1"));
    assert_eq!(h.ok(Verb::Count, "alice", json!({})).await["count"], 3);
    h.stop_worker().unwrap();

    // Another master key: refused at start, naming both keys, nothing written.
    let other = master_key(keys.path(), "other.key");
    let mut wrong = h.settings.clone();
    wrong.encryption.master_key_file = other.clone();
    let refused = tenantvec::worker::run(wrong, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("a worker with another master key started");
    let said = format!("{refused:#}");
    let fingerprint = |p: &Path| MasterKey::load(p).unwrap().fingerprint().to_owned();
    assert!(said.contains(&fingerprint(&other)), "{said}");
    assert!(said.contains(&fingerprint(&key)), "{said}");

    // The right key again: nothing was lost.
    h.start_worker().await;
    assert_eq!(h.ok(Verb::Count, "alice", json!({})).await["count"], 3);
    h.stop_worker().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_encryption_the_same_test_finds_the_text_and_vectors() {
    // The control of the test above: its search of the image finds what an
    // unencrypted tenant wrote.
    let test = "without_encryption_the_same_test_finds_the_text_and_vectors";
    let Some(mut fs) = Ext4::make(test, true) else {
        return;
    };
    let data = fs.data();
    let mut h = Harness::start_with(|s| s.store.folder = data).await;
    h.ok(Verb::Upsert, "alice", docs()).await;
    let stored = h
        .ok(
            Verb::Get,
            "alice",
            json!({"doc_ids": ["note-0"], "with_vectors": true}),
        )
        .await;
    let needle_vector = vector_bytes(&h, &stored);
    h.stop_worker().unwrap();
    assert!(fs.image_holds(MARKER.as_bytes()));
    assert!(fs.image_holds(&needle_vector));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_written_before_encryption_is_encrypted_by_its_next_open() {
    let test = "a_tenant_written_before_encryption_is_encrypted_by_its_next_open";
    let Some(fs) = Ext4::make(test, true) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key = master_key(keys.path(), "master.key");
    let data = fs.data();
    let mut h = Harness::start_with(|s| s.store.folder = data).await;
    h.ok(Verb::Upsert, "bob", docs()).await;
    h.stop_worker().unwrap();
    let store = fs.data().join("bob").join("vector_store");
    assert!(files(&store).iter().all(|f| std::fs::read(f).is_ok()));

    encrypted(&mut h.settings, &fs, &key);
    h.start_worker().await;
    assert_eq!(h.ok(Verb::Count, "bob", json!({})).await["count"], 3);
    let found = h
        .ok(
            Verb::Search,
            "bob",
            json!({"vector": common::vector(42, 8), "top_k": 1}),
        )
        .await;
    assert_eq!(found["results"][0]["doc_id"], "note-2", "{found}");
    h.ok(
        Verb::Upsert,
        "bob",
        json!({"documents": [{"doc_id": "late", "text": "x", "vector": common::vector(9, 8)}]}),
    )
    .await;
    h.stop_worker().unwrap();
    let now = files(&store);
    assert!(!now.is_empty());
    for f in &now {
        let err = std::fs::read(f).expect_err("a file of the copied tenant is in clear");
        assert_eq!(err.raw_os_error(), Some(ENOKEY), "{}: {err}", f.display());
    }
    assert!(!fs.data().join("bob").join("vector_store.import").exists());
    h.start_worker().await;
    assert_eq!(h.ok(Verb::Count, "bob", json!({})).await["count"], 4);
    h.stop_worker().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_a_killed_worker_left_are_removed_by_the_next_start() {
    let test = "keys_a_killed_worker_left_are_removed_by_the_next_start";
    let Some(fs) = Ext4::make(test, true) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key = master_key(keys.path(), "master.key");
    let nats = common::NatsServer::start();
    let logs = tempfile::tempdir().unwrap();
    let log_file = logs.path().join("worker.log");
    let spawn = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .unwrap();
        let mut cmd = Command::new(common::tenantvec_bin());
        cmd.arg("serve")
            .env("NATS_URL", nats.url())
            .env("VECTOR_STORE_FOLDER", fs.data())
            .env("EMBEDDING_DIM", "8")
            .env("TENANTVEC_METRICS_LISTEN", "")
            .env("TENANTVEC_ENCRYPTION", "true")
            .env("TENANTVEC_MASTER_KEY_FILE", &key)
            .env("RUST_LOG", "info,tenantvec=trace")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        cmd.spawn().expect("start the worker")
    };
    let settings = common::settings(&nats.url(), &fs.data());
    let mut worker = KillOnDrop(Some(spawn()));
    common::wait_ready(&settings, || false).await;
    let client = tenantvec::client::Client::connect(&settings).await.unwrap();
    client.tenant(Verb::Upsert, "carol", &docs()).await.unwrap();
    // Killed with the tenant open: its key stays in the filesystem.
    common::kill(&mut worker.0);
    let store = fs.data().join("carol").join("vector_store");
    let open = files(&store);
    assert!(
        open.iter().any(|f| std::fs::read(f).is_ok()),
        "the killed worker's tenant should still be readable until the next start"
    );
    let mut worker = KillOnDrop(Some(spawn()));
    common::wait_ready(&settings, || false).await;
    for f in files(&store) {
        let err = std::fs::read(&f).expect_err("a key left by the killed worker is still in");
        assert_eq!(err.raw_os_error(), Some(ENOKEY), "{}: {err}", f.display());
    }
    // And the tenant serves.
    let count = client
        .tenant(Verb::Count, "carol", &json!({}))
        .await
        .unwrap();
    assert_eq!(count["count"], 3);
    let found = client
        .tenant(
            Verb::Search,
            "carol",
            &json!({"vector": common::vector(40, 8), "top_k": 1}),
        )
        .await
        .unwrap();
    assert_eq!(found["results"][0]["text"], format!("{MARKER} 0"));
    common::kill(&mut worker.0);
    // The worker's log, at its most detailed, names no document's text.
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("tenant"), "the log is empty: {log}");
    assert!(
        !log.contains("zebra-marker"),
        "document text in the worker's log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_master_rewraps_every_key_and_the_old_key_opens_nothing() {
    let test = "rotate_master_rewraps_every_key_and_the_old_key_opens_nothing";
    let Some(fs) = Ext4::make(test, true) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let old = master_key(keys.path(), "old.key");
    let new = master_key(keys.path(), "new.key");
    let mut h = Harness::start_with(|s| encrypted(s, &fs, &old)).await;
    for tenant in ["alice", "bob", "carol"] {
        h.ok(Verb::Upsert, tenant, docs()).await;
    }
    h.stop_worker().unwrap();
    let rotate = || {
        let mut cmd = common::cli_command(&h.nats.url(), &["keys", "rotate-master", "--new"]);
        cmd.arg(&new).env("TENANTVEC_MASTER_KEY_FILE", &old);
        common::json_output(&mut cmd)
    };
    let before = sealed_key(&h, "alice").await.expect("alice has a key");
    let first = rotate();
    assert_eq!(first["rewrapped"], 3, "{first}");
    // The key wrapped with the old master key is erased, not only replaced.
    assert_ne!(
        sealed_key(&h, "alice").await.as_deref(),
        Some(before.as_str())
    );
    assert!(
        !jetstream_store_holds(&h, &before),
        "the old wrapping of a key is still in the JetStream store's files"
    );
    // Run again (as after an interruption): nothing left to do.
    let again = rotate();
    assert_eq!(
        (again["rewrapped"].as_u64(), again["already"].as_u64()),
        (Some(0), Some(3)),
        "{again}"
    );

    // The old key opens nothing: a worker with it is refused.
    let refused = tenantvec::worker::run(
        h.settings.clone(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("a worker with the old master key started");
    assert!(
        format!("{refused:#}").contains("wrapped with master key"),
        "{refused:#}"
    );
    // The new one opens every tenant, as before.
    h.settings.encryption.master_key_file = new.clone();
    h.start_worker().await;
    for tenant in ["alice", "bob", "carol"] {
        assert_eq!(h.ok(Verb::Count, tenant, json!({})).await["count"], 3);
        let found = h
            .ok(
                Verb::Search,
                tenant,
                json!({"vector": common::vector(42, 8), "top_k": 1}),
            )
            .await;
        assert_eq!(found["results"][0]["doc_id"], "note-2", "{found}");
    }
    h.stop_worker().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_without_encryption_is_refused_with_the_fix() {
    let test = "a_filesystem_without_encryption_is_refused_with_the_fix";
    let Some(fs) = Ext4::make(test, false) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key = master_key(keys.path(), "master.key");
    let mut s = common::settings("nats://127.0.0.1:1", &fs.data());
    encrypted(&mut s, &fs, &key);
    let refused = tenantvec::worker::run(s, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("encryption on a filesystem without it");
    let said = format!("{refused:#}");
    assert!(said.contains("tune2fs -O encrypt"), "{said}");
    assert!(said.contains(&fs.data().display().to_string()), "{said}");
}

#[test]
fn fscrypt_structs_match_the_kernel_headers() {
    use std::mem::{offset_of, size_of};
    use tenantvec::crypto::fscrypt::*;
    let test = "fscrypt_structs_match_the_kernel_headers";
    if !Path::new("/usr/include/linux/fscrypt.h").exists() {
        return skip(test, "no /usr/include/linux/fscrypt.h (linux-libc-dev)");
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("layout.c");
    std::fs::write(
        &source,
        r#"#include <stdio.h>
#include <stddef.h>
#include <linux/fscrypt.h>
#define S(t) printf(#t " %zu\n", sizeof(struct t))
#define O(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f))
#define N(c) printf(#c " %lu\n", (unsigned long)(c))
int main(void) {
  S(fscrypt_policy_v1); S(fscrypt_policy_v2); S(fscrypt_get_policy_ex_arg);
  S(fscrypt_key_specifier); S(fscrypt_add_key_arg); S(fscrypt_remove_key_arg);
  S(fscrypt_get_key_status_arg);
  O(fscrypt_policy_v2, master_key_identifier); O(fscrypt_get_policy_ex_arg, policy);
  O(fscrypt_key_specifier, u); O(fscrypt_add_key_arg, raw_size); O(fscrypt_add_key_arg, key_id);
  O(fscrypt_add_key_arg, raw); O(fscrypt_remove_key_arg, removal_status_flags);
  O(fscrypt_get_key_status_arg, status); O(fscrypt_get_key_status_arg, status_flags);
  O(fscrypt_get_key_status_arg, user_count);
  N(FS_IOC_SET_ENCRYPTION_POLICY); N(FS_IOC_GET_ENCRYPTION_POLICY_EX);
  N(FS_IOC_ADD_ENCRYPTION_KEY); N(FS_IOC_REMOVE_ENCRYPTION_KEY);
  N(FS_IOC_GET_ENCRYPTION_KEY_STATUS);
  N(FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER); N(FSCRYPT_MODE_AES_256_XTS); N(FSCRYPT_MODE_AES_256_CTS);
  N(FSCRYPT_POLICY_FLAGS_PAD_32); N(FSCRYPT_POLICY_V2); N(FSCRYPT_KEY_IDENTIFIER_SIZE);
  N(FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY); N(FSCRYPT_KEY_REMOVAL_STATUS_FLAG_OTHER_USERS);
  N(FSCRYPT_KEY_STATUS_PRESENT); N(FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED);
  return 0;
}
"#,
    )
    .unwrap();
    let binary = dir.path().join("layout");
    if let Err(e) = run(Command::new("cc").arg(&source).arg("-o").arg(&binary)) {
        return skip(
            test,
            &format!("cannot compile against the kernel headers: {e}"),
        );
    }
    let out = Command::new(&binary).output().unwrap();
    let c: std::collections::HashMap<String, u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect();
    let rust: Vec<(&str, u64)> = vec![
        ("fscrypt_policy_v1", size_of::<PolicyV1>() as u64),
        ("fscrypt_policy_v2", size_of::<PolicyV2>() as u64),
        (
            "fscrypt_get_policy_ex_arg",
            size_of::<GetPolicyExArg>() as u64,
        ),
        ("fscrypt_key_specifier", size_of::<KeySpecifier>() as u64),
        ("fscrypt_add_key_arg", size_of::<AddKeyArg>() as u64),
        ("fscrypt_remove_key_arg", size_of::<RemoveKeyArg>() as u64),
        (
            "fscrypt_get_key_status_arg",
            size_of::<GetKeyStatusArg>() as u64,
        ),
        (
            "fscrypt_policy_v2.master_key_identifier",
            offset_of!(PolicyV2, master_key_identifier) as u64,
        ),
        (
            "fscrypt_get_policy_ex_arg.policy",
            offset_of!(GetPolicyExArg, policy) as u64,
        ),
        (
            "fscrypt_key_specifier.u",
            offset_of!(KeySpecifier, u) as u64,
        ),
        (
            "fscrypt_add_key_arg.raw_size",
            offset_of!(AddKeyArg, raw_size) as u64,
        ),
        (
            "fscrypt_add_key_arg.key_id",
            offset_of!(AddKeyArg, key_id) as u64,
        ),
        // The key's bytes follow the header.
        ("fscrypt_add_key_arg.raw", size_of::<AddKeyArg>() as u64),
        (
            "fscrypt_remove_key_arg.removal_status_flags",
            offset_of!(RemoveKeyArg, removal_status_flags) as u64,
        ),
        (
            "fscrypt_get_key_status_arg.status",
            offset_of!(GetKeyStatusArg, status) as u64,
        ),
        (
            "fscrypt_get_key_status_arg.status_flags",
            offset_of!(GetKeyStatusArg, status_flags) as u64,
        ),
        (
            "fscrypt_get_key_status_arg.user_count",
            offset_of!(GetKeyStatusArg, user_count) as u64,
        ),
        (
            "FS_IOC_SET_ENCRYPTION_POLICY",
            FS_IOC_SET_ENCRYPTION_POLICY as u64,
        ),
        (
            "FS_IOC_GET_ENCRYPTION_POLICY_EX",
            FS_IOC_GET_ENCRYPTION_POLICY_EX as u64,
        ),
        (
            "FS_IOC_ADD_ENCRYPTION_KEY",
            FS_IOC_ADD_ENCRYPTION_KEY as u64,
        ),
        (
            "FS_IOC_REMOVE_ENCRYPTION_KEY",
            FS_IOC_REMOVE_ENCRYPTION_KEY as u64,
        ),
        (
            "FS_IOC_GET_ENCRYPTION_KEY_STATUS",
            FS_IOC_GET_ENCRYPTION_KEY_STATUS as u64,
        ),
        (
            "FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER",
            KEY_SPEC_TYPE_IDENTIFIER as u64,
        ),
        ("FSCRYPT_MODE_AES_256_XTS", MODE_AES_256_XTS as u64),
        ("FSCRYPT_MODE_AES_256_CTS", MODE_AES_256_CTS as u64),
        ("FSCRYPT_POLICY_FLAGS_PAD_32", POLICY_FLAGS_PAD_32 as u64),
        ("FSCRYPT_POLICY_V2", POLICY_V2 as u64),
        ("FSCRYPT_KEY_IDENTIFIER_SIZE", KEY_IDENTIFIER_SIZE as u64),
        (
            "FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY",
            KEY_REMOVAL_STATUS_FLAG_FILES_BUSY as u64,
        ),
        (
            "FSCRYPT_KEY_REMOVAL_STATUS_FLAG_OTHER_USERS",
            KEY_REMOVAL_STATUS_FLAG_OTHER_USERS as u64,
        ),
        ("FSCRYPT_KEY_STATUS_PRESENT", KEY_STATUS_PRESENT as u64),
        (
            "FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED",
            KEY_STATUS_INCOMPLETELY_REMOVED as u64,
        ),
    ];
    for (name, value) in rust {
        assert_eq!(
            c.get(name),
            Some(&value),
            "{name}: the header says {:?}, the code {value}",
            c.get(name)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_names_a_key_as_the_code_does() {
    // The key identifier is computed before the key goes in (so that a
    // crash never leaves a key unlisted): it must be the kernel's.
    use tenantvec::crypto::fscrypt::{Fscrypt, KeyIdentifier, KeyStatus, Removal};
    let test = "the_kernel_names_a_key_as_the_code_does";
    let Some(fs) = Ext4::make(test, true) else {
        return;
    };
    std::fs::create_dir_all(fs.data()).unwrap();
    let fscrypt = Fscrypt::open(&fs.data()).unwrap();
    let key = tenantvec::crypto::DataKey::generate(1).unwrap();
    let id = fscrypt.add_key(&key).unwrap();
    assert_eq!(id, KeyIdentifier::of(&key));
    assert_eq!(fscrypt.key_status(&id).unwrap(), KeyStatus::Present);
    let dir = fs.data().join("x");
    std::fs::create_dir(&dir).unwrap();
    fscrypt.set_policy(&dir, &id).unwrap();
    assert_eq!(fscrypt.policy(&dir).unwrap(), Some(id));
    std::fs::write(dir.join("note"), MARKER).unwrap();
    assert_eq!(fscrypt.remove_key(&id).unwrap(), Removal::Removed);
    assert_eq!(fscrypt.key_status(&id).unwrap(), KeyStatus::Absent);
    let name = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    assert_ne!(name, "note", "the name is seen without the key");
    let err = std::fs::read(dir.join(&name)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(ENOKEY));
    assert_eq!(fscrypt.remove_key(&id).unwrap(), Removal::Absent);
}

/// The sealed part of `tenant`'s wrapped key in the key store, if any.
async fn sealed_key(h: &Harness, tenant: &str) -> Option<String> {
    let js = h.jetstream().await;
    let kv = js
        .get_key_value("TENANTVEC_KEYS")
        .await
        .expect("the key bucket");
    let entry = kv.entry(tenant).await.expect("read the key")?;
    if entry.operation != async_nats::jetstream::kv::Operation::Put {
        return None;
    }
    let value: Value = serde_json::from_slice(&entry.value).unwrap();
    Some(value["sealed"].as_str().unwrap().to_owned())
}

/// Whether any file of the nats-server's JetStream store holds `needle`.
fn jetstream_store_holds(h: &Harness, needle: &str) -> bool {
    files(h.nats.store.path()).iter().any(|f| {
        std::fs::read(f)
            .map(|raw| raw.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .unwrap_or(false)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_destroys_the_tenants_key_and_every_copy_of_it() {
    let test = "a_drop_destroys_the_tenants_key_and_every_copy_of_it";
    let Some(Encrypted {
        fs,
        keys: _keys,
        key: _key,
        mut h,
    }) = Encrypted::start(test).await
    else {
        return;
    };
    h.ok(Verb::Upsert, "alice", docs()).await;
    h.ok(Verb::Upsert, "bob", docs()).await;
    let alice = sealed_key(&h, "alice").await.expect("alice has a key");
    assert!(
        jetstream_store_holds(&h, &alice),
        "the search of the store finds the key"
    );

    h.ok(Verb::Drop, "alice", json!({})).await;
    assert_eq!(sealed_key(&h, "alice").await, None);
    assert!(
        !jetstream_store_holds(&h, &alice),
        "the dropped tenant's wrapped key is still in the JetStream store's files"
    );
    assert!(!fs.data().join("alice").join("vector_store").exists());
    // The other tenant is untouched; the dropped one starts anew, under a new key.
    assert_eq!(h.ok(Verb::Count, "bob", json!({})).await["count"], 3);
    assert_eq!(h.ok(Verb::Count, "alice", json!({})).await["count"], 0);
    h.ok(Verb::Upsert, "alice", docs()).await;
    let again = sealed_key(&h, "alice").await.expect("a new key");
    assert_ne!(again, alice);
    h.stop_worker().unwrap();
    h.start_worker().await;
    assert_eq!(h.ok(Verb::Count, "alice", json!({})).await["count"], 3);
    h.stop_worker().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_on_a_jetstream_server_that_encrypts_its_store() {
    // The ingest stream holds a document's body until it is applied, and the
    // registry and key buckets live there too: JetStream's own encryption at
    // rest (docs/encryption.md) keeps them out of the server's files. The
    // same run without it is the control: the text is found.
    for encrypted_store in [false, true] {
        let conf_dir = tempfile::tempdir().unwrap();
        let conf = conf_dir.path().join("nats.conf");
        let jetstream = match encrypted_store {
            true => "jetstream {\n  cipher: chachapoly\n  key: \"a-test-key-for-jetstream-at-rest-0123\"\n}\n",
            false => "jetstream {}\n",
        };
        std::fs::write(&conf, jetstream).unwrap();
        let nats = common::NatsServer::start_with_config(conf);
        let mut h = Harness::start_on(nats, |_| {}).await;
        // The stream is made; with the worker stopped, a message waits in it.
        h.stop_worker().unwrap();
        let js = h.jetstream().await;
        let body = serde_json::to_vec(&json!({"documents": [
            {"doc_id": "n1", "text": MARKER, "vector": common::vector(3, 8)}
        ]}))
        .unwrap();
        js.publish("tenantvec.ingest.dora", body.into())
            .await
            .unwrap()
            .await
            .expect("JetStream stored the message");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut found = jetstream_store_holds(&h, "zebra-marker");
        while !found && !encrypted_store && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            found = jetstream_store_holds(&h, "zebra-marker");
        }
        assert_eq!(
            found, !encrypted_store,
            "JetStream encryption at rest {encrypted_store}: the text in the store's files"
        );
        // And the worker applies it.
        h.start_worker().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let n = h.ok(Verb::Count, "dora", json!({})).await["count"].as_u64();
            if n == Some(1) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the ingested document never landed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        h.stop_worker().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_sealed_with_the_tenants_key_and_no_longer_restores_after_a_drop() {
    use tenantvec::client::backup as cli;
    use tenantvec::tenant::TenantId;
    let test = "a_backup_is_sealed_with_the_tenants_key_and_no_longer_restores_after_a_drop";
    let Some(Encrypted {
        fs: _fs,
        keys: _keys,
        key: _key,
        h,
    }) = Encrypted::start(test).await
    else {
        return;
    };
    let alice = TenantId::parse("alice").unwrap();
    h.ok(Verb::Upsert, "alice", docs()).await;
    let backup = cli::backup(&h.client, &alice, Some("before"))
        .await
        .unwrap();
    assert_eq!(backup["documents"], 3, "{backup}");
    assert!(
        !jetstream_store_holds(&h, "zebra-marker"),
        "the backup's text is in clear in the JetStream store"
    );
    // It restores while the tenant's key lives.
    h.ok(Verb::Delete, "alice", json!({"doc_ids": ["note-0"]}))
        .await;
    let restored = cli::restore(&h.client, &alice, None, None, false)
        .await
        .unwrap();
    assert_eq!(restored["backup"], "before", "{restored}");
    assert_eq!(h.ok(Verb::Count, "alice", json!({})).await["count"], 3);
    // Dropped: its key is destroyed, and the backup no longer opens.
    h.ok(Verb::Drop, "alice", json!({})).await;
    let refused = cli::restore(&h.client, &alice, None, None, false)
        .await
        .expect_err("a backup restored after its tenant's key was destroyed");
    assert!(refused.to_string().contains("no longer has"), "{refused}");
    assert_eq!(h.ok(Verb::Count, "alice", json!({})).await["count"], 0);
}

/// A dead letter's body is sealed with its tenant's key: the record holds
/// no byte of it in clear, and `deadletters replay` (which publishes the
/// sealed body again) lands it once the cause is fixed, opened by the
/// worker that applies it. The control is tests/ingest.rs's dead-letter
/// tests, which find the body as it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_sealed_with_the_tenants_key_and_replays() {
    use base64::Engine as _;
    let test = "a_dead_letter_is_sealed_with_the_tenants_key_and_replays";
    let Some(Encrypted {
        fs: _fs,
        keys: _keys,
        key: _key,
        mut h,
    }) = Encrypted::start(test).await
    else {
        return;
    };
    let js = h.jetstream().await;
    // Vectors of 4 dimensions to a worker of 8: refused for good.
    let body = serde_json::to_vec(&json!({"documents": [
        {"doc_id": "late-1", "text": MARKER, "vector": common::vector(5, 4)}
    ]}))
    .unwrap();
    js.publish("tenantvec.ingest.late", body.into())
        .await
        .unwrap()
        .await
        .expect("JetStream stored the message");
    let url = h.nats.url();
    let cli = |args: &[&str]| common::json_output(&mut common::cli_command(&url, args));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let listed = cli(&["deadletters", "--tenant", "late"]);
        if listed["count"] == 1 {
            break listed;
        }
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let row = &listed["deadletters"][0];
    assert_eq!(row["error"]["code"], "dimension_mismatch", "{row}");
    assert_eq!(row["sealed"], true, "{row}");
    assert_eq!(row["replayable"], true, "{row}");

    // The record as stored: the body is a sealed object, not the message.
    let stream = js.get_stream("TENANTVEC_DEADLETTER").await.unwrap();
    let raw = stream
        .get_last_raw_message_by_subject("tenantvec.deadletter.late")
        .await
        .unwrap();
    let record: Value = serde_json::from_slice(&raw.payload).unwrap();
    let kept = base64::engine::general_purpose::STANDARD
        .decode(record["body_base64"].as_str().unwrap())
        .unwrap();
    assert!(kept.starts_with(b"tenantvec-e1\n"), "{record}");
    assert!(!kept.windows(12).any(|w| w == b"zebra-marker"));
    assert!(!raw.payload.windows(12).any(|w| w == b"zebra-marker"));
    assert_eq!(record["headers"]["Tenantvec-Sealed"], json!(["1"]));

    // Fixed (the dimension the producer uses), replayed: applied.
    h.stop_worker().unwrap();
    h.settings.store.dimension = 4;
    h.start_worker().await;
    let replayed = cli(&["deadletters", "replay", "--tenant", "late"]);
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while h.ok(Verb::Count, "late", json!({})).await["count"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the replay never landed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = h
        .ok(Verb::Get, "late", json!({"doc_ids": ["late-1"]}))
        .await;
    assert_eq!(got["documents"][0]["text"], MARKER, "{got}");
    assert_eq!(cli(&["deadletters"])["count"], 0);
    h.stop_worker().unwrap();
}

/// The tenant's entry in the key bucket, as stored.
async fn key_entry(h: &Harness, tenant: &str) -> Value {
    let js = h.jetstream().await;
    let kv = js.get_key_value("TENANTVEC_KEYS").await.unwrap();
    let entry = kv.entry(tenant).await.unwrap().expect("a key entry");
    serde_json::from_slice(&entry.value).unwrap()
}

/// `keys rotate T`: a new key for one tenant, its data encrypted again with
/// it, every search as before, the old key erased from the key bucket's
/// files, and a backup sealed with the old key no longer restores. Another
/// tenant is untouched. A rotation interrupted after its next key was
/// stored is finished by the tenant's next activation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_tenants_key_reencrypts_its_data_and_erases_the_old_key() {
    use tenantvec::client::backup as cli;
    use tenantvec::tenant::TenantId;
    let test = "rotating_a_tenants_key_reencrypts_its_data_and_erases_the_old_key";
    let Some(Encrypted {
        fs,
        keys: _keys,
        key,
        mut h,
    }) = Encrypted::start(test).await
    else {
        return;
    };
    h.ok(Verb::Upsert, "alice", docs()).await;
    h.ok(Verb::Upsert, "bob", docs()).await;
    let query = json!({"vector": common::vector(41, 8), "top_k": 3});
    let before = h.ok(Verb::Search, "alice", query.clone()).await;
    let alice = TenantId::parse("alice").unwrap();
    cli::backup(&h.client, &alice, Some("before"))
        .await
        .unwrap();
    let old = key_entry(&h, "alice").await;
    assert_eq!(old["version"], 1, "{old}");
    let bob_key = key_entry(&h, "bob").await;

    let url = h.nats.url();
    let rotated = common::json_output(&mut common::cli_command(&url, &["keys", "rotate", "alice"]));
    assert_eq!(rotated, json!({"rekeyed": true, "key_version": 2}));
    let new = key_entry(&h, "alice").await;
    assert_eq!(new["version"], 2, "{new}");
    assert!(new.get("next").is_none(), "{new}");
    assert_eq!(h.ok(Verb::Search, "alice", query.clone()).await, before);
    assert_eq!(key_entry(&h, "bob").await, bob_key);
    assert!(
        !jetstream_store_holds(&h, old["sealed"].as_str().unwrap()),
        "the old wrapped key is still in the JetStream store's files"
    );
    // Sealed with the old key: the backup no longer opens.
    let refused = cli::restore(&h.client, &alice, None, Some("before"), false)
        .await
        .expect_err("a backup sealed with a rotated-out key restored");
    assert!(refused.to_string().contains("no longer has"), "{refused}");
    // A restart: the new key opens the data; idle, it cannot be read.
    h.stop_worker().unwrap();
    for f in files(&fs.data().join("alice").join("vector_store")) {
        let err = std::fs::read(&f).expect_err("read without its key");
        assert_eq!(err.raw_os_error(), Some(ENOKEY), "{}", f.display());
    }
    h.start_worker().await;
    assert_eq!(h.ok(Verb::Search, "alice", query.clone()).await, before);

    // Interrupted: the next key stored beside the current one, the data
    // not yet copied (a worker killed there). The next activation finishes it.
    h.stop_worker().unwrap();
    let js = h.jetstream().await;
    let store = tenantvec::registry::keys::KeyStore::open(&js, "tenantvec", 1)
        .await
        .unwrap();
    let keyring = tenantvec::crypto::Keyring::new(MasterKey::load(&key).unwrap(), "tenantvec");
    let half = tenantvec::registry::keys::Keys { keyring, store };
    let next = half.begin_rotation("alice").await.unwrap();
    assert_eq!(next.version(), 3);
    assert_eq!(key_entry(&h, "alice").await["next"]["version"], 3);
    h.start_worker().await;
    assert_eq!(h.ok(Verb::Search, "alice", query).await, before);
    let finished = key_entry(&h, "alice").await;
    assert_eq!(finished["version"], 3, "{finished}");
    assert!(finished.get("next").is_none(), "{finished}");
    h.stop_worker().unwrap();
}

/// `export --plaintext`, for an operator who moves a tenant to another
/// deployment: the export is opened on the operator's side with the master
/// key, so the plaintext is in the file and never in the bucket, and it
/// imports into a deployment without the key. Without the flag the file
/// is sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_in_clear_is_opened_by_the_operator_and_moves_to_another_deployment() {
    let test = "an_export_in_clear_is_opened_by_the_operator_and_moves_to_another_deployment";
    let Some(Encrypted {
        fs: _fs,
        keys: _keys,
        key,
        h,
    }) = Encrypted::start(test).await
    else {
        return;
    };
    h.ok(Verb::Upsert, "alice", docs()).await;
    let out = tempfile::tempdir().unwrap();
    let (sealed, clear) = (out.path().join("sealed"), out.path().join("clear.jsonl"));
    let url = h.nats.url();
    let export = |file: &Path, plaintext: bool| {
        let mut cmd = common::cli_command(&url, &["export", "--tenant", "alice"]);
        cmd.arg(file).env("TENANTVEC_MASTER_KEY_FILE", &key);
        if plaintext {
            cmd.arg("--plaintext");
        }
        common::json_output(&mut cmd)
    };
    let summary = export(&sealed, false);
    assert_eq!(summary["sealed"], true, "{summary}");
    let raw = std::fs::read(&sealed).unwrap();
    assert!(raw.starts_with(b"tenantvec-e1\n"));
    assert!(!raw.windows(12).any(|w| w == b"zebra-marker"));

    let summary = export(&clear, true);
    assert_eq!(summary["opened"], true, "{summary}");
    let text = std::fs::read_to_string(&clear).unwrap();
    assert!(
        text.starts_with("{\"format\":\"tenantvec.export\""),
        "{text}"
    );
    assert!(text.contains(MARKER));
    assert!(
        !jetstream_store_holds(&h, "zebra-marker"),
        "the export's text went through the bucket in clear"
    );

    // Another deployment, without encryption, takes the file in clear.
    let other = Harness::start().await;
    let clear_path = clear.to_string_lossy().into_owned();
    common::json_output(&mut common::cli_command(
        &other.nats.url(),
        &["import", "--tenant", "alice", &clear_path],
    ));
    let got = other
        .ok(Verb::Get, "alice", json!({"doc_ids": ["note-1"]}))
        .await;
    assert_eq!(got["documents"][0]["text"], format!("{MARKER} 1"), "{got}");
}

/// Documents of the metadata the next tests seal: a listed key in clear, a
/// secret one sealed.
fn docs_with_secrets() -> Value {
    let docs: Vec<Value> = (0..3)
        .map(|i| {
            json!({
                "doc_id": format!("note-{i}"),
                "text": format!("{MARKER} {i}"),
                "metadata": {"kind": "note", "diagnosis": format!("zebra-diagnosis-{i}")},
                "vector": common::vector(40 + i, 8),
            })
        })
        .collect();
    json!({ "documents": docs })
}

fn sealed_documents(s: &mut Settings, key: &Path) {
    s.encryption.enabled = true;
    s.encryption.master_key_file = key.to_owned();
    s.encryption.plaintext_metadata = vec!["kind".into()];
}

/// What a worker with sealed documents answers: every document whole,
/// filters on the listed key, a filter on a sealed key refused, a key
/// rotation and a backup round trip that keep every answer.
async fn sealed_documents_serve(h: &Harness) {
    use tenantvec::client::backup as cli;
    use tenantvec::protocol::ErrorCode;
    use tenantvec::tenant::TenantId;
    let query = json!({"vector": common::vector(41, 8), "top_k": 3});
    let before = h.ok(Verb::Search, "alice", query.clone()).await;
    assert_eq!(before["results"][0]["doc_id"], "note-1", "{before}");
    assert_eq!(before["results"][0]["text"], format!("{MARKER} 1"));
    assert_eq!(
        before["results"][0]["metadata"],
        json!({"kind": "note", "diagnosis": "zebra-diagnosis-1"})
    );
    let got = h
        .ok(Verb::Get, "alice", json!({"doc_ids": ["note-2"]}))
        .await;
    assert_eq!(
        got["documents"][0]["metadata"]["diagnosis"],
        "zebra-diagnosis-2"
    );
    let listed = json!({"filter": {"kind": "note"}});
    assert_eq!(h.ok(Verb::Count, "alice", listed).await["count"], 3);
    let said = h
        .fails(
            Verb::Count,
            "alice",
            json!({"filter": {"diagnosis": "zebra-diagnosis-1"}}),
            ErrorCode::BadRequest,
        )
        .await;
    assert!(said.contains("encrypted"), "{said}");
    // Another tenant's point: its text is its own.
    h.ok(Verb::Upsert, "bob", docs()).await;
    assert_eq!(h.ok(Verb::Count, "alice", json!({})).await["count"], 3);

    let rotated = common::json_output(&mut common::cli_command(
        &h.nats.url(),
        &["keys", "rotate", "alice"],
    ));
    assert_eq!(rotated["key_version"], 2, "{rotated}");
    assert_eq!(h.ok(Verb::Search, "alice", query.clone()).await, before);
    let alice = TenantId::parse("alice").unwrap();
    cli::backup(&h.client, &alice, Some("sealed"))
        .await
        .unwrap();
    h.ok(Verb::Delete, "alice", json!({"doc_ids": ["note-0"]}))
        .await;
    cli::restore(&h.client, &alice, None, None, false)
        .await
        .unwrap();
    assert_eq!(h.ok(Verb::Search, "alice", query).await, before);
}

/// The edge store's shared layout holds every tenant in one shard, so the
/// kernel cannot encrypt per tenant: each document's text and metadata are
/// sealed with its tenant's key instead, but for the keys listed to filter
/// on. The stored files hold neither the text nor a sealed value; the
/// control (encryption off) finds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_shared_layout_text_and_metadata_are_sealed_but_listed_keys() {
    use tenantvec::config::Layout;
    let keys = tempfile::tempdir().unwrap();
    let key = master_key(keys.path(), "master.key");
    for encrypted in [false, true] {
        let mut h = Harness::start_with(|s| {
            s.store.layout = Layout::Shared;
            if encrypted {
                sealed_documents(s, &key);
            }
        })
        .await;
        h.ok(Verb::Upsert, "alice", docs_with_secrets()).await;
        if encrypted {
            sealed_documents_serve(&h).await;
        }
        h.stop_worker().unwrap();
        let holds = |needle: &str| {
            files(&h.settings.store.folder).iter().any(|f| {
                std::fs::read(f)
                    .map(|raw| raw.windows(needle.len()).any(|w| w == needle.as_bytes()))
                    .unwrap_or(false)
            })
        };
        assert_eq!(
            holds("zebra-marker"),
            !encrypted,
            "encrypted {encrypted}: the text"
        );
        assert_eq!(
            holds("zebra-diagnosis"),
            !encrypted,
            "encrypted {encrypted}: a sealed metadata value"
        );
        if encrypted {
            h.start_worker().await;
            let found = h
                .ok(Verb::Get, "alice", json!({"doc_ids": ["note-1"]}))
                .await;
            assert_eq!(found["documents"][0]["text"], format!("{MARKER} 1"));
        }
    }
    // require_full refuses the combination, when the settings load.
    let refused = Settings::load(
        None,
        vec![
            ("store.layout", json!("shared")),
            ("encryption.enabled", json!(true)),
            ("encryption.master_key_file", json!(key)),
            ("encryption.require_full", json!(true)),
        ],
    )
    .expect_err("require_full loaded with the shared layout");
    let said = format!("{refused:#}");
    assert!(said.contains("require_full"), "{said}");
}

/// The same on the Qdrant server (with `QDRANT_URL`): its stored payloads,
/// as the server returns them, hold no text and no sealed metadata value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_qdrant_server_text_and_metadata_are_sealed_but_listed_keys() {
    use common::qdrant as server;
    use tenantvec::config::{Backend, Layout};
    let test = "on_the_qdrant_server_text_and_metadata_are_sealed_but_listed_keys";
    let Some(url) = server::url_or_skip(test) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key = master_key(keys.path(), "master.key");
    for layout in [Layout::PerTenant, Layout::Shared] {
        let space = server::Space::new(&url);
        let h = Harness::start_with(|s| {
            s.store.backend = Backend::Qdrant;
            s.store.layout = layout;
            server::configure(s, &url, &space);
            sealed_documents(s, &key);
        })
        .await;
        h.ok(Verb::Upsert, "alice", docs_with_secrets()).await;
        sealed_documents_serve(&h).await;
        let stored = space.payloads();
        assert!(
            stored.contains("note"),
            "{layout:?}: the listed key's value"
        );
        assert!(!stored.contains("zebra-marker"), "{layout:?}: {stored}");
        assert!(!stored.contains("zebra-diagnosis"), "{layout:?}: {stored}");
    }
}
