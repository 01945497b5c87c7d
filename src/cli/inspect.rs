//! `attache inspect`: what attache has done on this node.

use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, Result};

#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// attache's records (the configuration's cacheDir).
    #[arg(long, default_value = crate::engine::config::DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Release what is reported as leaked.
    #[arg(long)]
    pub gc: bool,
    /// With --gc: do not ask.
    #[arg(long)]
    pub yes: bool,
}

pub fn run(_args: &InspectArgs, _out: &mut dyn Write) -> Result<()> {
    Err(Error::Internal("inspect: not written yet".into()))
}
