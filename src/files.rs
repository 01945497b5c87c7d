//! State files, read and written safely wherever attache keeps them (records, host-local's folder,
//! manifests in `networksDir`, metrics): bounded reads that never follow a symlink, state folders that
//! are real directories, and whether a temporary's writer still runs. A leaf: it depends on nothing but
//! [`crate::error`].

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::libc;

use crate::error::{Error, Result};

/// Open a state file for reading without following a symlink, and read at most `max` bytes of it.
pub fn read_bounded(p: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)?;
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Create `dir` (and its parents) and make sure it is a real directory: a symlink planted where
/// attache keeps state would send its writes elsewhere.
pub fn ensure_real_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let md = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("inspecting {}", dir.display()), e))?;
    if !md.is_dir() {
        return Err(Error::io(
            format!(
                "{} is not a directory (a symlink?): attache keeps no state through one",
                dir.display()
            ),
            std::io::Error::from_raw_os_error(libc::ELOOP),
        ));
    }
    Ok(())
}

/// Whether the process that wrote a temporary still runs.
pub fn pid_alive(pid: i32) -> bool {
    pid == std::process::id() as i32
        || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Create `path` — which must not exist; a symlink there is never followed — with `mode`, and write
/// `bytes` into it: the temporary of every atomic replace attache does (records, host-local
/// reservations, metrics, installed files). The open file is returned for a caller that syncs it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(f)
}

/// The one temp-and-rename writer: `bytes` become `path` whole — written to a temporary beside it, then
/// renamed over it — so a reader sees the old content or the new, never part of one, and a running
/// binary keeps its old inode. The temporary is `.<stem>.<pid>.<n>.tmp` (`<stem>`: the file name without
/// its last extension), created exclusively and never through a symlink, with `mode` (whatever the
/// umask); a dot name with no configuration extension, so that no runtime or collector listing the
/// folder reads it, and [`pid_alive`] tells whether its writer still runs. `durable`: synced before the
/// rename (installed files; a pod's state is not, see the README's Reliability). On failure the
/// temporary goes.
pub fn replace(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    replace_with(path, mode, durable, |f| {
        use std::io::Write;
        f.write_all(bytes)
    })
}

/// [`replace`] with the content of the file `src`, copied through a small buffer: a binary is never
/// held in memory whole (`attache install` runs under a memory limit of a few times its size).
pub fn replace_with_copy(path: &Path, src: &Path, mode: u32, durable: bool) -> std::io::Result<()> {
    let mut from = std::fs::File::open(src)?;
    replace_with(path, mode, durable, |f| {
        std::io::copy(&mut from, f).map(|_| ())
    })
}

/// Remove the temporaries [`replace`] left beside `path` when their writer was killed (its pid no longer
/// runs); a live writer's stay.
pub fn remove_dead_temporaries(path: &Path) {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{stem}.");
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix)?.strip_suffix(".tmp"))
            .and_then(|rest| rest.split('.').next()?.parse::<i32>().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The temporary of [`replace`], filled by `fill`, then renamed over `path`.
fn replace_with(
    path: &Path,
    mode: u32,
    durable: bool,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .or(path.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{stem}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    // A temporary of this name can only be a dead process's that had this PID (this process numbers
    // its own): it goes, and the write goes on.
    let created = match write_new(&tmp, &[], mode) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp).and_then(|()| write_new(&tmp, &[], mode))
        }
        other => other,
    };
    let written = created.and_then(|mut f| {
        fill(&mut f)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether two files hold the same bytes, compared a buffer at a time (never read whole); a file that
/// cannot be read differs.
pub fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut fa), Ok(mut fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    match (fa.metadata(), fb.metadata()) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {}
        _ => return false,
    }
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = match fa.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return fb.read(&mut bb[..1]).is_ok_and(|m| m == 0);
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Open (creating it) a lock file, never through a symlink.
pub fn open_lock(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(path)
}

/// Take `f`'s exclusive flock, waiting at most `wait`; `None` when it stayed busy.
pub fn lock_within(
    mut f: std::fs::File,
    wait: std::time::Duration,
) -> std::result::Result<Option<nix::fcntl::Flock<std::fs::File>>, nix::errno::Errno> {
    use nix::errno::Errno;
    use nix::fcntl::{Flock, FlockArg};
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_micros(100);
    loop {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Some(lock)),
            Err((back, Errno::EWOULDBLOCK | Errno::EINTR)) => f = back,
            Err((_, errno)) => return Err(errno),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Overwrite a small file without truncating it to zero first. ext4 treats "truncate to zero, then
/// write" as a replace and forces the data to disk on close (`auto_da_alloc`), which cost ~0.2 ms per
/// host-local ADD here; writing over the old bytes and then cutting the length does not. A crash in between can
/// leave trailing digits, which makes the address unparsable: the allocator then starts from the range's
/// beginning, as the reference does when this file is missing.
pub fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    overwrite(path, bytes, true)
}

/// Overwrite a file that exists, in place (never through a symlink); `NotFound` if there is none.
pub fn overwrite_existing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    overwrite(path, bytes, false)
}

fn overwrite(path: &Path, bytes: &[u8], create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)?;
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)
}

/// FNV-1a over the parts, NUL separated: stable across builds, processes and platforms (unlike std's
/// hasher), for names derived from state (host-side link names, index buckets).
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_writers_temporary_of_the_same_name_does_not_stop_a_replace() {
        let d = crate::testutil::tempdir("files-stale-tmp");
        let path = d.join("rec.json");
        // Every temporary name this process could use next, left by a dead process with its PID.
        for n in 0..4096 {
            let name = format!(".rec.{}.{n}.tmp", std::process::id());
            std::fs::write(d.join(name), "stale").unwrap();
        }
        replace(&path, b"new", 0o600, false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_copy_replaces_whole_and_compares_by_content() {
        let d = crate::testutil::tempdir("files-copy");
        let (src, dst) = (d.join("src"), d.join("dst"));
        // More than one buffer, so that the compare and the copy go round.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &big).unwrap();
        assert!(!same_content(&src, &dst), "a missing file differs");
        replace_with_copy(&dst, &src, 0o755, true).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), big);
        assert!(same_content(&src, &dst));
        let mut other = big.clone();
        *other.last_mut().unwrap() ^= 1;
        std::fs::write(&dst, &other).unwrap();
        assert!(!same_content(&src, &dst), "the last byte differs");
        std::fs::write(&dst, &big[..big.len() - 1]).unwrap();
        assert!(!same_content(&src, &dst), "one byte shorter");
        use std::os::unix::fs::PermissionsExt;
        replace_with_copy(&dst, &src, 0o755, false).unwrap();
        assert_eq!(
            std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temporary left: {left:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
