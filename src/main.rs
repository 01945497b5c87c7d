//! The `attache` binary: wire the real environment, stdin and stdout to the CNI dispatcher — or, given
//! arguments and no `CNI_COMMAND`, run an operator's command ([`attache::cli`]).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let invoked_as = std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "attache".into());
    // An operator's command (`attache install ...`): a runtime always sets CNI_COMMAND.
    if attache::cli::is_cli(&invoked_as) {
        return attache::cli::main(std::env::args_os());
    }
    let mut engine = attache::engine::Engine::new(invoked_as);
    engine.depth = std::env::var("ATTACHE_EXEC_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    let code = attache::cni::skel::run(
        &attache::cni::skel::ProcessEnv,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &engine,
    );
    ExitCode::from(code as u8)
}
