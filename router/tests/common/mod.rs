//! Helpers shared by the router's integration tests that need network namespaces (`nft`). Each test file includes this module with `mod common;`.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::fs::File;
use std::os::fd::AsRawFd as _;

/// Runs `f` on a thread inside namespace `ns`.
pub(crate) fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(format!("/var/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; only this thread moves.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}
