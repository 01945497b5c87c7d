//! Child processes that die with attache, started at vfork cost.
//!
//! A runtime that kills attache at its timeout must not leave a delegate (or `nft`) finishing an ADD
//! behind it while the DEL that follows runs: every child attache starts asks the kernel for
//! `PR_SET_PDEATHSIG(SIGKILL)`. That is a step between the new process and its `execve`, and the standard
//! library (and tokio) take `fork` for any such step; `fork` copies attache's page tables, about 1.2 ms
//! on a cloud VM, against a few tens of microseconds for the `vfork`-style `clone` that `posix_spawn`
//! uses when there is no step. So attache makes that clone itself: `clone(CLONE_VM | CLONE_VFORK |
//! CLONE_PIDFD)`, and the child, on a stack of its own in attache's memory, does only async-signal-safe
//! system calls — signal dispositions back to default, the signal mask restored, its pipes put on
//! 0/1/2, `prctl`, a check that attache is still there, `execve` — while attache's calling thread waits
//! for the `execve`. Everything the child reads (paths, argv, envp) is built before the clone.
//!
//! The child is waited for through its pidfd (no pid-reuse race, no SIGCHLD handler); on a kernel
//! without `CLONE_PIDFD` (before 5.2) the clone goes without it and a blocking thread waits.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};

use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// What one of the child's standard streams is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdio {
    /// The same as attache's.
    Inherit,
    /// `/dev/null`.
    Null,
    /// A pipe to attache, taken from the [`Child`].
    Piped,
}

/// A program to start: its path (or a name found in `PATH`), arguments, environment changes and streams.
#[derive(Clone, Debug)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    stdio: [Stdio; 3],
}

impl Command {
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            stdio: [Stdio::Inherit; 3],
        }
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Command {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Set one variable of the child's environment (attache's own environment is the base).
    pub fn env(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Command {
        self.env
            .push((k.as_ref().to_owned(), Some(v.as_ref().to_owned())));
        self
    }

    pub fn env_remove(&mut self, k: impl AsRef<OsStr>) -> &mut Command {
        self.env.push((k.as_ref().to_owned(), None));
        self
    }

    pub fn stdin(&mut self, s: Stdio) -> &mut Command {
        self.stdio[0] = s;
        self
    }

    pub fn stdout(&mut self, s: Stdio) -> &mut Command {
        self.stdio[1] = s;
        self
    }

    pub fn stderr(&mut self, s: Stdio) -> &mut Command {
        self.stdio[2] = s;
        self
    }

    /// The environment the child gets: attache's, with this command's changes, the last one winning.
    fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (k, v) in &self.env {
            vars.retain(|(name, _)| name != k);
            if let Some(v) = v {
                vars.push((k.clone(), v.clone()));
            }
        }
        vars
    }

    /// The file to execute: the program itself when it names a path, else the first executable of that
    /// name in the child's `PATH`.
    fn resolve(&self, env: &[(OsString, OsString)]) -> io::Result<PathBuf> {
        let p = Path::new(&self.program);
        if self.program.as_bytes().contains(&b'/') {
            return Ok(p.to_path_buf());
        }
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            });
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(p);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is in no directory of PATH", p.display()),
        ))
    }

    /// Start the child. Its pipes, if any, are in the returned [`Child`].
    pub fn spawn(&self) -> io::Result<Child> {
        let env = self.environment();
        let file = cstring(self.resolve(&env)?.as_os_str())?;
        let argv_owned: Vec<CString> = std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(cstring)
            .collect::<io::Result<_>>()?;
        let envp_owned: Vec<CString> = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstring(&kv)
            })
            .collect::<io::Result<_>>()?;
        let argv = null_terminated(&argv_owned);
        let envp = null_terminated(&envp_owned);

        // The child's ends go on 0/1/2; attache's ends are close-on-exec and never reach the child.
        let mut ours: [Option<OwnedFd>; 3] = [None, None, None];
        let mut theirs: [Option<OwnedFd>; 3] = [None, None, None];
        for (i, s) in self.stdio.iter().enumerate() {
            match s {
                Stdio::Inherit => {}
                Stdio::Null => {
                    let null = std::fs::OpenOptions::new()
                        .read(i == 0)
                        .write(i != 0)
                        .open("/dev/null")?;
                    theirs[i] = Some(null.into());
                }
                Stdio::Piped => {
                    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
                    let (mine, child) = if i == 0 { (w, r) } else { (r, w) };
                    ours[i] = Some(mine);
                    theirs[i] = Some(child);
                }
            }
        }
        let mut fds = [-1 as RawFd; 3];
        for (i, t) in theirs.iter().enumerate() {
            if let Some(t) = t {
                fds[i] = t.as_raw_fd();
            }
        }
        let (pid, pidfd) = clone_exec(&file, &argv, &envp, fds)?;
        drop(theirs);
        let [stdin, stdout, stderr] = ours;
        let waiter = match pidfd {
            // SAFETY: an OwnedFd is open, and stays this descriptor while the AsyncFd owns it.
            Some(fd) => Waiter::PidFd(
                #[allow(unsafe_code)]
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)?,
            ),
            None => Waiter::Blocking,
        };
        Ok(Child {
            pid,
            waiter,
            status: None,
            stdin: stdin.map(pipe::Sender::from_owned_fd).transpose()?,
            stdout: stdout.map(pipe::Receiver::from_owned_fd).transpose()?,
            stderr: stderr.map(pipe::Receiver::from_owned_fd).transpose()?,
        })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} holds a NUL byte"),
        )
    })
}

fn null_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// How a child's end is awaited.
#[derive(Debug)]
enum Waiter {
    PidFd(AsyncFd<OwnedFd>),
    /// No pidfd (a kernel before 5.2): a blocking thread waits.
    Blocking,
}

/// A started child. Dropped before it was waited for, it is killed and reaped.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    waiter: Waiter,
    status: Option<ExitStatus>,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

impl Child {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Wait for the child to end, and reap it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        // Its stdin is closed first, as tokio does, so that a child reading to the end can end.
        self.stdin = None;
        let status = match &self.waiter {
            Waiter::PidFd(fd) => loop {
                let mut ready = fd.readable().await?;
                match reap(self.pid, false)? {
                    Some(s) => break s,
                    None => ready.clear_ready(),
                }
            },
            Waiter::Blocking => {
                let pid = self.pid;
                tokio::task::spawn_blocking(move || reap(pid, true))
                    .await
                    .map_err(io::Error::other)??
                    .ok_or_else(|| io::Error::other("waitpid returned without a status"))?
            }
        };
        self.status = Some(status);
        Ok(status)
    }

    /// SIGKILL the child (if it has not been reaped yet) and wait for it.
    pub async fn kill(&mut self) -> io::Result<()> {
        if self.status.is_none() {
            self.signal_kill();
        }
        self.wait().await.map(|_| ())
    }

    fn signal_kill(&self) {
        // The pid is this child's until it is reaped (a zombie keeps it): no reuse race.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    /// Its whole stdout and stderr (those that are piped) and its status.
    pub async fn wait_with_output(mut self) -> io::Result<Output> {
        self.stdin = None;
        async fn all(p: Option<pipe::Receiver>) -> io::Result<Vec<u8>> {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                p.read_to_end(&mut buf).await?;
            }
            Ok(buf)
        }
        let (out, err) = tokio::try_join!(all(self.stdout.take()), all(self.stderr.take()))?;
        let status = self.wait().await?;
        Ok(Output {
            status,
            stdout: out,
            stderr: err,
        })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        self.signal_kill();
        // Killed, it ends at once unless the kernel holds it in an uninterruptible wait: reaped now if
        // it has, else by a thread that waits for it (attache's short life usually ends first).
        if !matches!(reap(self.pid, false), Ok(Some(_))) {
            let pid = self.pid;
            let _ = std::thread::Builder::new()
                .name("reap".into())
                .spawn(move || reap(pid, true));
        }
    }
}

/// `waitpid` of one child: its status, or `None` when `block` is false and it has not ended.
fn reap(pid: libc::pid_t, block: bool) -> io::Result<Option<ExitStatus>> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let flags = (!block).then_some(WaitPidFlag::WNOHANG);
    loop {
        return match waitpid(nix::unistd::Pid::from_raw(pid), flags) {
            Ok(WaitStatus::Exited(_, code)) => Ok(Some(ExitStatus::from_raw((code & 0xff) << 8))),
            Ok(WaitStatus::Signaled(_, sig, core)) => Ok(Some(ExitStatus::from_raw(
                sig as i32 | if core { 0x80 } else { 0 },
            ))),
            Ok(WaitStatus::StillAlive) => Ok(None),
            // Stopped or continued (only reported when asked for): not an end.
            Ok(_) if block => continue,
            Ok(_) => Ok(None),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

/// What the child reads, all of it made before the clone (the child must not allocate: it shares
/// attache's heap and its locks).
struct ChildPlan {
    file: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    fds: [RawFd; 3],
    parent: libc::pid_t,
    mask: libc::sigset_t,
    /// Written by the child when it fails before `execve` returns to nothing: the errno.
    error: std::sync::atomic::AtomicI32,
}

/// The child's whole life before `execve`. Only raw system calls: no allocation, no panic, no lock.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    #[allow(unsafe_code)]
    // SAFETY: `arg` is the `ChildPlan` on the parent's stack, which lives until the child has exec'd or
    // exited (CLONE_VFORK suspends the parent's thread until then); every call below is async-signal-safe
    // and reads only memory the plan points to.
    unsafe {
        let plan = &*(arg as *const ChildPlan);
        let fail = |plan: &ChildPlan| -> ! {
            plan.error.store(
                *libc::__errno_location(),
                std::sync::atomic::Ordering::SeqCst,
            );
            libc::_exit(127)
        };
        // attache's signal handlers must not run in the child (it shares attache's memory): every caught
        // signal goes back to its default; ignored ones stay ignored, as across any execve.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        let mut sig = 1;
        while sig <= libc::SIGRTMAX() {
            let mut old: libc::sigaction = std::mem::zeroed();
            if sig != libc::SIGKILL
                && sig != libc::SIGSTOP
                && libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
            {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
            sig += 1;
        }
        if libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut()) != 0 {
            fail(plan);
        }
        let mut target = 0;
        while target < 3 {
            let fd = plan.fds[target as usize];
            if fd >= 0 {
                let ok = if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(fd, target) == target
                };
                if !ok {
                    fail(plan);
                }
            }
            target += 1;
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(plan);
        }
        // attache died before the prctl: nobody is there to be died with, nor to read the result.
        if libc::getppid() != plan.parent {
            libc::_exit(127);
        }
        libc::execve(plan.file, plan.argv, plan.envp);
        fail(plan)
    }
}

/// The clone itself: the child's pid and, when the kernel gives one, its pidfd.
#[allow(unsafe_code)]
fn clone_exec(
    file: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    fds: [RawFd; 3],
) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    // The child's stack, in attache's memory; what it runs needs far less than this.
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: plain libc calls on owned, initialised values.
    let mut plan = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut mask: libc::sigset_t = std::mem::zeroed();
        // No signal may run attache's handlers in the child before it has reset them.
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut mask);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        ChildPlan {
            file: file.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            fds,
            parent: libc::getpid(),
            mask,
            error: std::sync::atomic::AtomicI32::new(0),
        }
    };
    let top = stack.as_mut_ptr().wrapping_add(stack.len());
    let top = top.wrapping_sub(top as usize % 16) as *mut libc::c_void;
    let mut pidfd: libc::c_int = -1;
    let base = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: the child runs `child_main` on `stack`, which outlives it as a running copy of this
    // process (CLONE_VFORK: this thread resumes only after its execve or exit); `plan` lives on this
    // frame until then. CLONE_PIDFD writes the pidfd through the parent-tid pointer.
    let mut pid = unsafe {
        libc::clone(
            child_main,
            top,
            base | libc::CLONE_PIDFD,
            &mut plan as *mut ChildPlan as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let mut clone_error = io::Error::last_os_error();
    if pid < 0 && clone_error.raw_os_error() == Some(libc::EINVAL) {
        // A kernel without CLONE_PIDFD.
        pidfd = -1;
        // SAFETY: as above, without the pidfd.
        pid = unsafe {
            libc::clone(
                child_main,
                top,
                base,
                &mut plan as *mut ChildPlan as *mut libc::c_void,
            )
        };
        clone_error = io::Error::last_os_error();
    }
    // SAFETY: restores this thread's mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
    }
    drop(stack);
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: the kernel wrote a new descriptor there, ours alone.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    let errno = plan.error.load(std::sync::atomic::Ordering::SeqCst);
    if errno != 0 {
        // It exited before execve: reap it, and say why.
        let _ = reap(pid, true);
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok((pid, pidfd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn pipes_environment_arguments_and_status_reach_the_child_and_back() {
        rt().block_on(async {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                "read l; echo \"$l $1 $SPAWN_T\"; echo err >&2; exit 3",
                "sh",
                "arg1",
            ])
            .env("SPAWN_T", "env-ok")
            .stdin(Stdio::Piped)
            .stdout(Stdio::Piped)
            .stderr(Stdio::Piped);
            let mut child = c.spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"line\n")
                .await
                .unwrap();
            let out = child.wait_with_output().await.unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "line arg1 env-ok\n");
            assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
            assert_eq!(out.status.code(), Some(3));
        });
    }

    #[test]
    fn a_removed_variable_is_not_in_the_childs_environment() {
        rt().block_on(async {
            let mut c = Command::new("/usr/bin/env");
            c.env("SPAWN_GONE", "1")
                .env_remove("SPAWN_GONE")
                .env_remove("PATH")
                .env("SPAWN_KEPT", "2")
                .stdout(Stdio::Piped);
            let out = c.spawn().unwrap().wait_with_output().await.unwrap();
            let vars = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(vars.lines().any(|l| l == "SPAWN_KEPT=2"), "{vars}");
            assert!(
                !vars
                    .lines()
                    .any(|l| l.starts_with("SPAWN_GONE=") || l.starts_with("PATH=")),
                "{vars}"
            );
        });
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_an_error_with_its_errno() {
        rt().block_on(async {
            let e = Command::new("/nonexistent/prog").spawn().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
            let e = Command::new("no-such-program-anywhere")
                .spawn()
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
            // A file that is executable by mode but not a program.
            let d = std::env::temp_dir().join(format!("spawn-noexec-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            let f = d.join("garbage");
            std::fs::write(&f, [0u8, 1, 2, 3]).unwrap();
            std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            let e = Command::new(&f).spawn().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOEXEC), "{e}");
            std::fs::remove_dir_all(&d).unwrap();
        });
    }

    #[test]
    fn the_child_is_told_to_die_with_its_parent_and_a_killed_one_reports_its_signal() {
        rt().block_on(async {
            let mut c = Command::new("sh");
            c.args(["-c", "echo PPid:$PPID; sleep 30"])
                .stdout(Stdio::Piped);
            let mut child = c.spawn().unwrap();
            // The death signal itself is not in /proc; the parent is, and the kill test in
            // integration/ proves the guarantee end to end.
            let mut buf = [0u8; 256];
            let n = child.stdout.as_mut().unwrap().read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                text.contains(&format!("PPid:{}", std::process::id())),
                "{text}"
            );
            child.kill().await.unwrap();
            assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        });
    }

    #[test]
    fn a_dropped_child_is_killed_and_reaped() {
        rt().block_on(async {
            let child = Command::new("sleep").arg("30").spawn().unwrap();
            let pid = child.id() as i32;
            drop(child);
            // Reaped: the pid is no longer a child of this process.
            let gone = (0..100).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                matches!(
                    nix::sys::wait::waitpid(
                        nix::unistd::Pid::from_raw(pid),
                        Some(nix::sys::wait::WaitPidFlag::WNOHANG)
                    ),
                    Err(nix::errno::Errno::ECHILD)
                )
            });
            assert!(gone, "pid {pid} still a child");
        });
    }
}
