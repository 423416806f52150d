//! Keep a closed tenant's data in the page cache: the engine's request to
//! drop it, `madvise(MADV_PAGEOUT)`, is declined.
//!
//! Qdrant Edge 0.7.2 pages out every mapped file of a segment when the
//! segment is dropped (its `Drop` calls `clear_cache`, "as it might pollute
//! the cache"), which suits a server with a few huge collections. Here a
//! segment is dropped each time a tenant leaves the pool, so the next
//! activation of that tenant, and the first searches after it, read the
//! tenant's files from the disk again: measured on the benchmark's warm
//! phase, 8 major page faults per search and a search's store time 1.5 ms
//! against 0.2 ms of CPU. Declining the advice leaves the choice to the
//! kernel's LRU, which keeps what was used recently and reclaims it under
//! memory pressure like any page cache; nothing is kept in the process's own
//! memory once a shard is closed.
//!
//! How: this crate defines the C symbol `madvise`, which the linker binds
//! the engine's (and every other Rust crate's) calls to instead of the C
//! library's. It forwards every advice to the kernel unchanged, by the raw
//! system call, except `MADV_PAGEOUT`, which it answers as done. The C
//! library's own calls (its allocator) do not go through it. It must never
//! change any other advice, and never fail a call the kernel would not.

/// `madvise(2)`, as the engine calls it. See the module documentation.
///
/// # Safety
/// The same as `madvise(2)`'s: `addr` and `len` describe mappings of this
/// process.
#[no_mangle]
pub unsafe extern "C" fn madvise(
    addr: *mut libc::c_void,
    len: libc::size_t,
    advice: libc::c_int,
) -> libc::c_int {
    if advice == libc::MADV_PAGEOUT {
        return 0;
    }
    // SAFETY: the caller's promise, passed on to the kernel unchanged.
    unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice) as libc::c_int }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Other advice reaches the kernel: an invalid one is refused by it,
    /// a valid one on a real mapping succeeds; page-out is declined.
    #[test]
    fn only_page_out_is_declined() {
        let len = 4096 * 4;
        // SAFETY: an anonymous private mapping of our own, unmapped below.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED);
            assert_eq!(madvise(addr, len, libc::MADV_WILLNEED), 0);
            assert_eq!(madvise(addr, len, libc::MADV_PAGEOUT), 0);
            assert_eq!(
                madvise(addr, len, 9999),
                -1,
                "an unknown advice is the kernel's to refuse"
            );
            libc::munmap(addr, len);
        }
    }
}
