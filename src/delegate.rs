//! Exec of external CNI plugins, exactly per the spec: the binary found by `type` in the search path,
//! `CNI_*` in its environment, the complete configuration on stdin, its result or error read back from
//! stdout with its error code passed through.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cni::conf;
use crate::cni::skel::{CniArgs, Command};
use crate::error::{Error, Result, code};
use crate::spawn::Stdio;

/// The `CNI_*` environment of one delegated call.
#[derive(Clone, Debug)]
pub struct Invocation<'a> {
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub cni_args: CniArgs,
    /// The link group a native driver puts the pod's interface in (set by the meta-plugin, so that DEL
    /// removes a pod's native interfaces together); an exec'd plugin is not told.
    pub link_group: Option<u32>,
    /// Directories searched for plugin binaries, and passed on as `CNI_PATH`.
    pub path: &'a [PathBuf],
}

impl<'a> Invocation<'a> {
    /// For the pod-less verbs (STATUS, GC): no container, netns or interface.
    pub fn podless(path: &'a [PathBuf]) -> Invocation<'a> {
        Invocation {
            container_id: "",
            netns: None,
            ifname: "",
            cni_args: CniArgs::default(),
            link_group: None,
            path,
        }
    }
}

/// Find a plugin binary by type. A missing one names the type and every directory searched.
pub fn find_plugin(plugin_type: &str, dirs: &[PathBuf]) -> Result<PathBuf> {
    conf::validate_plugin_type(plugin_type)?;
    for d in dirs {
        let p = d.join(plugin_type);
        if let Ok(md) = std::fs::metadata(&p)
            && md.is_file()
            && md.permissions().mode() & 0o111 != 0
        {
            return Ok(p);
        }
    }
    let searched = if dirs.is_empty() {
        "no directories (CNI_PATH is empty)".to_string()
    } else {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::NotReady(format!(
        "plugin {plugin_type:?} is not installed: it is in none of {searched}"
    )))
}

static EXEC_DEPTH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// How many attache processes stand above this one; children are told one more.
pub fn set_exec_depth(depth: u32) {
    EXEC_DEPTH.store(depth, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `bin` is the very file this process runs (through any symlink or hard link).
fn is_self(bin: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(bin), std::fs::metadata("/proc/self/exe")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Run one plugin binary for one command. `Ok(None)` when it succeeded and printed nothing.
pub async fn exec(
    command: Command,
    plugin_type: &str,
    conf: &Value,
    inv: &Invocation<'_>,
) -> Result<Option<Value>> {
    let bin = find_plugin(plugin_type, inv.path)?;
    crate::fail::point("delegate.exec")?;
    // attache runs every type it implements in-process: a type that resolves to attache's own binary
    // would only run attache again in a role it does not have — and, for an IPAM type, loop forever.
    if is_self(&bin) {
        return Err(Error::config(format!(
            "plugin type {plugin_type:?} resolves to {}, which is attache itself; attache does not implement {plugin_type:?} and will not exec itself",
            bin.display()
        )));
    }
    let path = inv
        .path
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut cmd = crate::spawn::Command::new(&bin);
    cmd.env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.cni_args.to_env_string())
        .env("CNI_PATH", path)
        .env(
            "ATTACHE_EXEC_DEPTH",
            (EXEC_DEPTH.load(std::sync::atomic::Ordering::Relaxed) + 1).to_string(),
        )
        .stdin(Stdio::Piped)
        .stdout(Stdio::Piped)
        .stderr(Stdio::Inherit);
    match inv.netns {
        Some(ns) => cmd.env("CNI_NETNS", ns),
        None => cmd.env_remove("CNI_NETNS"),
    };
    let stdin_bytes = serde_json::to_vec(conf).map_err(|e| Error::Internal(e.to_string()))?;
    tracing::debug!(
        plugin = plugin_type,
        command = command.as_str(),
        ifname = inv.ifname,
        "exec delegate"
    );
    // The child dies with attache (src/spawn.rs): a runtime that kills attache at its timeout must not
    // leave a delegate finishing an ADD behind it while the DEL that follows runs.
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting plugin {}", bin.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe: its exit status tells what happened.
        let _ = stdin.write_all(&stdin_bytes).await;
        drop(stdin);
    }
    // A result is a few KiB: a plugin that writes without end is stopped, not read without bound.
    let mut out = Vec::new();
    if let Some(pipe) = child.stdout.take() {
        pipe.take(MAX_OUTPUT + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| Error::io(format!("reading the output of plugin {}", bin.display()), e))?;
    }
    if out.len() as u64 > MAX_OUTPUT {
        let _ = child.kill().await;
        return Err(Error::io(
            format!("reading the output of plugin {}", bin.display()),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("it wrote more than {} MiB", MAX_OUTPUT >> 20),
            ),
        ));
    }
    let status = child
        .wait()
        .await
        .map_err(|e| Error::io(format!("waiting for plugin {}", bin.display()), e))?;
    let stdout = String::from_utf8_lossy(&out);
    let text = stdout.trim();
    if !status.success() {
        return Err(delegate_error(plugin_type, command, text, status));
    }
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|source| Error::Decode {
            what: format!("the output of plugin {plugin_type:?}"),
            source,
        })
}

/// The most a delegate may write on stdout (a result with prevResult is a few KiB).
pub const MAX_OUTPUT: u64 = crate::cni::skel::MAX_STDIN;

fn delegate_error(
    plugin_type: &str,
    command: Command,
    stdout: &str,
    status: std::process::ExitStatus,
) -> Error {
    #[derive(serde::Deserialize)]
    struct Reply {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_str::<Reply>(stdout) {
        Ok(r) => Error::Delegate {
            plugin: plugin_type.to_string(),
            code: r.code,
            msg: r.msg,
            details: r.details,
            context: String::new(),
        },
        Err(_) => Error::Delegate {
            plugin: plugin_type.to_string(),
            code: code::INTERNAL,
            msg: format!("{} failed ({status}) without a CNI error", command.as_str()),
            details: stdout.chars().take(2000).collect(),
            context: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fake_plugin, rt, tempdir};
    use serde_json::json;

    #[test]
    fn missing_plugin_names_type_and_dirs() {
        let e = find_plugin("nosuch", &[PathBuf::from("/a"), PathBuf::from("/b")]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("nosuch") && msg.contains("/a, /b"), "{msg}");
    }

    /// The error of an ADD of the plugin `name` found in `dir`.
    fn add_of(dir: &Path, name: &str) -> Error {
        let path = vec![dir.to_path_buf()];
        let inv = Invocation {
            container_id: "c1",
            netns: None,
            ifname: "eth0",
            cni_args: CniArgs::default(),
            link_group: None,
            path: &path,
        };
        rt().block_on(exec(Command::Add, name, &json!({}), &inv))
            .unwrap_err()
    }

    #[test]
    fn garbage_output_is_999_with_details() {
        let d = tempdir("garbage");
        fake_plugin(&d, "junk", "echo 'segfault!'; exit 2");
        let e = add_of(&d, "junk");
        assert_eq!(e.cni_code(), 999);
        assert!(e.details().contains("segfault"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_plugin_that_writes_without_end_is_stopped_not_read_without_bound() {
        let d = tempdir("endless");
        fake_plugin(&d, "endless", "exec yes 0123456789abcdef");
        let e = add_of(&d, "endless");
        assert!(e.to_string().contains("more than 4 MiB"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
