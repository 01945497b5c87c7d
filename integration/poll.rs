//! Polling for what the kernel or a server does asynchronously: a module of every crate that includes the
//! testbed or the real API server (the end-to-end tests, the VM tests, the benchmark).

/// Poll `f` every 50 ms until it holds or `secs` pass (the kernel tears a netns down asynchronously; a
/// server takes its time to come up).
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
