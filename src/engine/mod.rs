//! The engine: what a validated CNI invocation does. `"type": "attache"` runs the meta-plugin (plan the
//! pod's attachments, run them in order, roll back on failure, keep a record, tear down from it); a type
//! attache implements natively runs that driver directly (drop-in mode); anything else is refused.

pub mod chain;
pub mod config;
pub mod meta;
pub mod plan;
pub mod record;

use serde_json::Value;

use crate::cni::conf::NetConf;
use crate::cni::skel::{CmdArgs, Plugin};
use crate::error::{Error, Result};

/// The plugin behind the real binary. `invoked_as` is the binary's file name: installed as `bridge`
/// (a symlink), attache behaves as that plugin whatever `type` says, as the reference plugin would.
pub struct Engine {
    pub invoked_as: String,
}

impl Engine {
    pub fn new(invoked_as: impl Into<String>) -> Engine {
        Engine {
            invoked_as: invoked_as.into(),
        }
    }

    /// The plugin type this invocation runs as.
    fn effective_type<'a>(&'a self, conf: &'a NetConf) -> &'a str {
        if crate::attach::is_native(&self.invoked_as) {
            &self.invoked_as
        } else {
            &conf.plugin_type
        }
    }
}

impl Plugin for Engine {
    fn run(&self, args: &CmdArgs, conf: NetConf) -> Result<Option<Value>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::io("starting the async runtime", e))?;
        let kind = self.effective_type(&conf).to_string();
        match kind.as_str() {
            "attache" => rt.block_on(meta::run(args, conf)),
            t if crate::attach::is_native(t) => {
                rt.block_on(crate::attach::run_standalone(t, args, conf))
            }
            t => Err(Error::config(format!(
                "attache does not implement plugin type {t:?}; it runs \"attache\" (the meta-plugin){}",
                crate::attach::native_list_suffix()
            ))),
        }
    }
}

/// Send `tracing` output to `file` at `level`. Logging never fails an operation: a file that cannot be
/// opened means no log.
pub fn init_logging(file: Option<&std::path::Path>, level: tracing::Level) {
    let Some(path) = file else { return };
    let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(f))
        .with_max_level(level)
        .with_ansi(false)
        .try_init();
}
