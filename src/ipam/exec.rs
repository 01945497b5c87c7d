//! IPAM types attache does not own (`dhcp`, `whereabouts`, ...): exec'd with the whole configuration,
//! per the spec; their result loses its interfaces (the driver assigns them).

use serde_json::Value;

use crate::cni::conf::NetConf;
use crate::cni::skel::{CmdArgs, Command};
use crate::cni::spec::CniResult;
use crate::delegate::{self, Invocation};
use crate::error::{Error, Result};

fn invocation(args: &CmdArgs) -> Invocation<'_> {
    Invocation {
        container_id: &args.container_id,
        netns: args.netns.as_deref(),
        ifname: &args.ifname,
        cni_args: args.args.clone(),
        link_group: None,
        path: &args.path,
    }
}

/// Allocate: the plugin's result, without interfaces or interface indexes.
pub(super) async fn add(plugin: &str, args: &CmdArgs, conf: &NetConf) -> Result<CniResult> {
    let out = delegate::exec(
        Command::Add,
        plugin,
        &Value::Object(conf.raw.clone()),
        &invocation(args),
    )
    .await?
    .ok_or_else(|| Error::Ipam(format!("IPAM plugin {plugin:?} printed no result")))?;
    let mut r = CniResult::from_value(&out, conf.version)?;
    r.interfaces.clear();
    for ip in &mut r.ips {
        ip.interface = None;
    }
    Ok(r)
}

/// DEL or CHECK: the plugin's verdict, no result.
pub(super) async fn run(
    command: Command,
    plugin: &str,
    args: &CmdArgs,
    conf: &NetConf,
) -> Result<()> {
    delegate::exec(
        command,
        plugin,
        &Value::Object(conf.raw.clone()),
        &invocation(args),
    )
    .await
    .map(|_| ())
}
