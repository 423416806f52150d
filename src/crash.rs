//! Crash points: the places where the crash tests (`tests/failpoints.rs`)
//! kill the worker, named and switched through tikv's `fail` crate.
//!
//! Owns the one way a point kills: SIGKILL sent by the process to itself,
//! as `kill -9` or the kernel's OOM killer would, so no destructor runs, no
//! buffer is flushed and nothing in flight is finished. Only a binary built
//! with the `failpoints` feature has the points; in every other build a
//! point compiles to nothing, and this module must never be reached.
//! A test names the points to switch on in the worker's `FAILPOINTS`
//! environment (`fail`'s syntax, e.g. `ingest-after-write=return`).

/// Kill this process at once with SIGKILL. Never returns.
pub fn kill_now(point: &str) -> ! {
    eprintln!("crash point {point}: the worker kills itself (SIGKILL)");
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    // The signal is delivered before the call returns; nothing goes on.
    loop {
        std::thread::park();
    }
}

/// `crash_point!("name")`: the worker dies here when the point `name` is
/// switched on (`name=return`); nothing at all without the `failpoints`
/// feature.
/// `crash_point!("name", cond)`: only where `cond` holds.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| $crate::crash::kill_now($name))
    };
    ($name:literal, $cond:expr) => {
        fail::fail_point!($name, $cond, |_| $crate::crash::kill_now($name))
    };
}
