//! Named step boundaries for the crash-safety tests. With the `test-hooks` feature,
//! `BULWARKD_TEST_CRASH_AT=<step>` makes bulwarkd SIGKILL itself when it reaches
//! that step; shipped builds compile `point` to nothing.

/// Every step boundary, in the order an operation passes them.
pub const POINTS: &[&str] = &[
    "enroll:start",
    "enroll:bound",
    "enroll:committed",
    "create:verified",
    "create:committed",
    "start:devices-in-use",
    "start:spawned",
    "delete:start",
    "delete:committed",
    "scrub:record-created",
    "scrub:reset-done",
    "scrub:vendor-done",
    "scrub:committed",
    "release:committed",
    "unenroll:committed",
];

/// A step boundary: with the test hook armed for `name`, the process dies here as if
/// killed from outside (SIGKILL: no destructor, no flush).
#[inline]
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown crash point {name}");
    #[cfg(feature = "test-hooks")]
    if std::env::var("BULWARKD_TEST_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("bulwarkd: test hook: SIGKILL at {name}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}
