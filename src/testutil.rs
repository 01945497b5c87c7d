//! Helpers shared by unit tests.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cni::skel::{CmdArgs, CniArgs, Command};

/// An ADD of container c1 / eth0 with the given CNI_ARGS.
pub fn cmd_args(cni_args: &str) -> CmdArgs {
    CmdArgs {
        command: Command::Add,
        container_id: "c1".into(),
        netns: None,
        netns_ignored: None,
        nothing_to_do: None,
        ifname: "eth0".into(),
        args: CniArgs::parse(cni_args).unwrap(),
        path: vec![],
    }
}

/// A fake plugin: a shell script that logs its command and echoes a canned result.
pub fn fake_plugin(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    writeln!(f, "#!/bin/sh\n{body}").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attache-delegate-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
