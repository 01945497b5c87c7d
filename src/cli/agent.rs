//! `attache agent`: the node's long-lived helper, a container of the DaemonSet. It keeps the node's
//! mirror of NetworkAttachmentDefinitions ([`crate::k8s::mirror`]) so that ADD reads definitions from
//! the node's disk. Never required: without it (not deployed, dead, hung) ADD asks the API as before.

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The mirror's folder: the path attache's configuration names as `nadMirror` (`attache install`
    /// writes it), which must be the same on the node.
    #[arg(long, default_value = crate::engine::config::DEFAULT_NAD_MIRROR)]
    pub nad_mirror: PathBuf,
    /// The socket ADDs hand their reports to (the configuration's `agentSocket`); "" serves none.
    #[arg(long, default_value = crate::k8s::relay::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The kubeconfig (default: the in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds one API call of a report may take.
    #[arg(long, default_value_t = 10.0)]
    pub api_timeout: f64,
}

pub fn run(args: &AgentArgs) -> Result<()> {
    let mirror = crate::k8s::mirror::Mirror::new(&args.nad_mirror);
    eprintln!(
        "attache agent: mirroring NetworkAttachmentDefinitions into {}",
        args.nad_mirror.display()
    );
    let timeout = std::time::Duration::from_secs_f64(args.api_timeout.clamp(0.1, 60.0));
    let kubeconfig = args.kubeconfig.as_deref();
    super::runtime()?.block_on(async {
        let mirroring = crate::k8s::agent::mirror_nads(&mirror, kubeconfig);
        if args.socket.as_os_str().is_empty() {
            return mirroring.await;
        }
        eprintln!(
            "attache agent: serving reports on {}",
            args.socket.display()
        );
        let serving = crate::k8s::relay::serve(&args.socket, kubeconfig, timeout);
        // Either ending is the agent's end (the DaemonSet restarts it).
        tokio::select! {
            r = mirroring => r,
            r = serving => r,
        }
    })
}
