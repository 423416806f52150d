//! A shard's files on disk: the room left before a write, the exclusive
//! lock file, and the compaction of the engine's WAL.
//!
//! Owns those checks and the lock. It must never let a write start on a
//! disk below `store.min_free_disk_mb`, nor open a shard whose lock another
//! handle holds.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{LOCK_FILE, LOCK_PATIENCE};
use crate::protocol::ServiceError;
use crate::store::internal;

/// Refuse a write while the disk under `dir` has less than `min_free`
/// bytes free. The engine writes through memory-mapped files: a page it
/// cannot get on a full disk is a SIGBUS, which no error handling survives,
/// so the write must not start. Answered `internal`, naming the disk: only an
/// operator can free space. A disk whose free space cannot be read is let
/// through (the engine reports what it finds).
pub(super) fn check_room(who: &str, dir: &Path, min_free: u64) -> Result<(), ServiceError> {
    if min_free == 0 {
        return Ok(());
    }
    let free = match free_bytes(dir) {
        Ok(free) => free,
        Err(e) => {
            tracing::warn!(%who, dir = %dir.display(), error = %e, "cannot read the disk's free space");
            return Ok(());
        }
    };
    if free >= min_free {
        return Ok(());
    }
    Err(internal(
        who,
        "write",
        format!(
            "the disk of {} has {} MiB free, less than store.min_free_disk_mb ({} MiB); \
             writes are refused until space is freed",
            dir.display(),
            free >> 20,
            min_free >> 20
        ),
    ))
}

/// Bytes an unprivileged writer may still use on the disk under `dir`.
pub(super) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Delete the WAL segments the engine no longer needs, while the shard is
/// closed and its lock is held.
///
/// Qdrant Edge 0.7.2 writes every operation to its WAL but never acknowledges
/// (truncates) it and never replays it on load: its segments are the data,
/// flushed after each of our writes. Left alone, the WAL grows with every
/// write ever made and each load re-reads and checksums all of it. This does
/// what the engine's own `ack` would: it removes the closed segments
/// (`closed-<first index>`) except the newest, which the WAL needs to number
/// the next operation after the last one (operation numbers version the
/// points, so they must never go back). Open segments are left as they are.
pub(super) fn compact_wal(dir: &Path) -> std::io::Result<()> {
    let wal = dir.join("wal");
    let mut closed: Vec<(u64, PathBuf)> = match std::fs::read_dir(&wal) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let start = name.strip_prefix("closed-")?.parse::<u64>().ok()?;
                Some((start, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    closed.sort();
    closed.pop(); // the newest closed segment stays
    for (_, path) in closed {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Take the shard's exclusive lock, or fail: some other handle (another
/// worker on the same folder, or a bug that would open it twice) has it.
pub(super) fn lock(who: &str, dir: &Path) -> Result<File, ServiceError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| internal(who, "open lock file", e))?;
    // A lock can be held for a moment by someone who is not using the store:
    // a process forked by this one keeps a copy of the descriptor until it
    // execs. So wait a little before calling the store taken.
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ServiceError::unavailable(format!(
                    "{who}: the store is open in another process; retry later"
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(internal(who, "lock store", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_with_room_lets_writes_through_and_one_without_refuses() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        check_room("t", dir.path(), 0).unwrap();
        check_room("t", dir.path(), 1).unwrap();
        let err = check_room("t", dir.path(), u64::MAX).unwrap_err();
        assert_eq!(err.code, crate::protocol::ErrorCode::Internal);
        assert!(err.message.contains("min_free_disk_mb"), "{}", err.message);
        // An unreadable disk is left to the engine.
        check_room("t", &dir.path().join("missing"), u64::MAX).unwrap();
    }
}
