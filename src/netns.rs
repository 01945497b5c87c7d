//! Network namespaces: an owned handle on a netns file, and the only place attache ever `setns`es.
//!
//! Entering a netns is scoped to a short-lived thread that exits afterwards ([`NetNs::run`]), so an early
//! return can never leave a thread — least of all a tokio worker — in the wrong namespace. A netlink socket
//! belongs to the namespace it was created in, so sockets for a pod are created by such a thread and then
//! used from the runtime without entering anything.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// An open network namespace. The fd stays valid as long as this lives, so links can be moved into it by fd.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

const NSFS_MAGIC: i64 = 0x6e73_6673;

impl NetNs {
    /// Open a netns by path (`/run/netns/NAME`, `/proc/PID/ns/net`). Anything else is code 8.
    pub fn open(path: &Path) -> Result<NetNs> {
        let bad = |reason: String| Error::NetNs {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| bad(e.desc().to_string()))?;
        // nsfs (bind mounts under /run/netns and /proc/*/ns/net); procfs for older kernels.
        let magic = fs.filesystem_type().0 as i64;
        if magic != NSFS_MAGIC && magic != 0x9fa0 {
            return Err(bad("not a network namespace file".into()));
        }
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The namespace this process runs in.
    pub fn current() -> Result<NetNs> {
        NetNs::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Whether two handles name the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &NetNs) -> bool {
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Run `f` on a fresh thread inside this namespace. The thread ends with `f`, so nothing else ever runs
    /// in the namespace by accident, whatever `f` returns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.file.as_fd();
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                // A thread that shares its fs attributes with the process can still setns(CLONE_NEWNET).
                setns(fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::kernel(format!("setns into {}", self.path.display()), e))?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Internal("a thread inside a netns panicked".into()))?
        })
    }
}

/// A `NETLINK_ROUTE` socket created inside `ns` (or in the current namespace for `None`), with strict
/// checking on so the kernel filters dumps, ready for the tokio runtime. Must be called from within one.
pub fn route_socket(ns: Option<&NetNs>) -> Result<rtnetlink::sys::TokioSocket> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let make = || -> std::io::Result<rtnetlink::sys::Socket> {
        let s = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
        s.set_netlink_get_strict_chk(true)?;
        s.set_ext_ack(true)?;
        Ok(s)
    };
    let sock = match ns {
        None => make(),
        Some(ns) => ns.run(make)?,
    }
    .map_err(|e| Error::io("creating a netlink socket", e))?;
    // SAFETY: the fd was just created and is owned by `sock`; ownership moves to the TokioSocket.
    Ok(unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(sock.into_raw_fd()) })
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_own_namespace_and_rejects_other_files() {
        let me = NetNs::current().unwrap();
        let again = NetNs::open(Path::new("/proc/self/ns/net")).unwrap();
        assert!(me.same_as(&again));
        let e = NetNs::open(Path::new("/etc/hostname")).unwrap_err();
        assert_eq!(e.cni_code(), 8);
        let e = NetNs::open(Path::new("/nonexistent/netns")).unwrap_err();
        assert_eq!(e.cni_code(), 8);
    }

    #[test]
    fn run_returns_the_closure_value() {
        let me = NetNs::current().unwrap();
        assert_eq!(me.run(|| 41 + 1).unwrap(), 42);
    }
}
