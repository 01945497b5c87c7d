//! Native attachment drivers, run in-process over netlink: the plugin types attache owns. Each one also
//! works on its own (drop-in mode): a conf with that `type`, or the binary installed under that name.

use serde_json::Value;

use crate::cni::conf::NetConf;
use crate::cni::skel::CmdArgs;
use crate::error::{Error, Result};

/// The plugin types attache implements itself.
pub const NATIVE_TYPES: &[&str] = &[];

pub fn is_native(t: &str) -> bool {
    NATIVE_TYPES.contains(&t)
}

/// ", and natively: bridge, ..." for error messages; empty while there are none.
pub fn native_list_suffix() -> String {
    if NATIVE_TYPES.is_empty() {
        String::new()
    } else {
        format!(" and natively {}", NATIVE_TYPES.join(", "))
    }
}

/// Run a native driver as a standalone plugin (drop-in mode).
pub async fn run_standalone(t: &str, _args: &CmdArgs, _conf: NetConf) -> Result<Option<Value>> {
    Err(Error::config(format!("native type {t:?} is not available")))
}
