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

// `NS_GET_NSTYPE` (linux/nsfs.h): `_IO(0xb7, 0x3)`, answers the CLONE_NEW* flag of the namespace.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

fn ns_kind(flag: i32) -> &'static str {
    use CloneFlags as F;
    match CloneFlags::from_bits_truncate(flag) {
        f if f == F::CLONE_NEWUTS => "UTS",
        f if f == F::CLONE_NEWIPC => "IPC",
        f if f == F::CLONE_NEWNS => "mount",
        f if f == F::CLONE_NEWPID => "PID",
        f if f == F::CLONE_NEWUSER => "user",
        f if f == F::CLONE_NEWCGROUP => "cgroup",
        _ => "non-network",
    }
}

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
        // nsfs holds every kind of namespace: ask the kernel which kind this one is (Linux 4.11+;
        // an older kernel that does not know the request is taken at its word).
        #[allow(unsafe_code)]
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd, which `file` keeps open.
        let nstype = unsafe { ns_get_nstype(file.as_raw_fd()) };
        match nstype {
            Ok(t) if t == CloneFlags::CLONE_NEWNET.bits() => {}
            Ok(t) => {
                return Err(bad(format!(
                    "it is a {} namespace, not a network namespace",
                    ns_kind(t)
                )));
            }
            Err(nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(bad(format!("asking its namespace type: {}", e.desc()))),
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

    /// A second handle on the same namespace (for an undo list that must outlive a connection).
    pub fn try_clone(&self) -> Result<NetNs> {
        Ok(NetNs {
            file: self.file.try_clone().map_err(|e| {
                Error::io(format!("duplicating the fd of {}", self.path.display()), e)
            })?,
            path: self.path.clone(),
        })
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
            .map_err(crate::fail::panic_error)?
        })
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread that lives inside one namespace and runs closures there until dropped — for an invocation
/// that needs the pod's namespace several times (a socket, then sysctls), without paying a thread start
/// each time. It never runs anything but the closures sent to it, and never leaves the namespace.
pub struct NsWorker {
    tx: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetNs {
    /// Start a worker inside this namespace.
    pub fn worker(&self) -> Result<NsWorker> {
        let fd = self
            .file
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating the fd of {}", self.path.display()), e))?;
        let path = self.path.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("netns-worker".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let entered = setns(&fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::kernel(format!("setns into {}", path.display()), e));
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })
            .map_err(|e| Error::io("starting a netns worker thread", e))?;
        ready_rx
            .recv()
            .map_err(|_| Error::Internal("the netns worker died".into()))??;
        Ok(NsWorker {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

impl NsWorker {
    /// Run `f` inside the namespace and await its value.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (otx, orx) = futures::channel::oneshot::channel();
        // A panic inside is caught there (the worker lives on) and becomes the caller's error.
        let job: Job = Box::new(move || {
            let _ = otx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| Error::Internal("the netns worker is gone".into()))?;
        orx.await
            .map_err(|_| Error::Internal("the netns worker is gone".into()))?
            .map_err(crate::fail::panic_error)
    }

    /// A route socket inside the worker's namespace (see [`route_socket`]).
    pub async fn route_socket(&self) -> Result<rtnetlink::sys::TokioSocket> {
        let sock = self
            .run(make_route_socket)
            .await?
            .map_err(|e| Error::io("creating a netlink socket", e))?;
        Ok(into_tokio(sock))
    }
}

impl Drop for NsWorker {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn make_route_socket() -> std::io::Result<rtnetlink::sys::Socket> {
    let s = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
    s.set_netlink_get_strict_chk(true)?;
    s.set_ext_ack(true)?;
    Ok(s)
}

#[allow(unsafe_code)]
fn into_tokio(sock: rtnetlink::sys::Socket) -> rtnetlink::sys::TokioSocket {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the fd was just created and is owned by `sock`; ownership moves to the TokioSocket.
    unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(sock.into_raw_fd()) }
}

/// A `NETLINK_ROUTE` socket created inside `ns` (or in the current namespace for `None`), with strict
/// checking on so the kernel filters dumps, ready for the tokio runtime. Must be called from within one.
pub fn route_socket(ns: Option<&NetNs>) -> Result<rtnetlink::sys::TokioSocket> {
    let sock = match ns {
        None => make_route_socket(),
        Some(ns) => ns.run(make_route_socket)?,
    }
    .map_err(|e| Error::io("creating a netlink socket", e))?;
    Ok(into_tokio(sock))
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
        let e = NetNs::open(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert_eq!(e.cni_code(), 8);
        assert!(e.to_string().contains("UTS namespace"), "{e}");
    }

    #[test]
    fn worker_runs_closures_inside() {
        let me = NetNs::current().unwrap();
        let w = me.worker().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(w.run(|| 6 * 7)).unwrap(), 42);
        assert_eq!(rt.block_on(w.run(|| "again")).unwrap(), "again");
    }

    #[test]
    fn run_returns_the_closure_value() {
        let me = NetNs::current().unwrap();
        assert_eq!(me.run(|| 41 + 1).unwrap(), 42);
    }
}
