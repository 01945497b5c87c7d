//! `start`: how long attache takes to start and answer VERSION, against a reference plugin.

use std::path::PathBuf;

use crate::Args;
use crate::harness::{Series, exec};
use crate::report::Report;

/// Process start: CNI_COMMAND=VERSION, and /bin/true as the machine's fork+exec floor.
pub(crate) fn process_start(a: &Args, r: &mut Report) -> f64 {
    println!();
    println!("process start (CNI_COMMAND=VERSION; /bin/true is the machine's fork+exec floor):");
    let mut median = 0.0;
    for (key, label, bin) in [
        ("start_true", "/bin/true", PathBuf::from("/bin/true")),
        (
            "start_reference_bridge",
            "reference bridge",
            a.reference_dir.join("bridge"),
        ),
        ("start_attache", "attache", a.attache.clone()),
    ] {
        let mut s = Series::default();
        for _ in 0..a.rounds {
            s.0.push(
                exec(
                    &bin,
                    &[("CNI_COMMAND", "VERSION")],
                    b"{\"cniVersion\":\"1.0.0\"}",
                )
                .dur,
            );
        }
        median = r.row(key, label, &s);
    }
    median
}

/// How a delegate is started, in this process: `posix_spawn` (vfork-style, what std and tokio do with no
/// pre-exec step, and no death guarantee); `fork` with a pre-exec `PR_SET_PDEATHSIG` (attache before
/// issue 22.4); and attache's own clone (`attache::spawn`: vfork cost, with the guarantee). Each spawns
/// /bin/true and reaps it; the three alternate.
pub(crate) fn spawn_rows(a: &Args, r: &mut Report) {
    println!();
    println!("starting a delegate (/bin/true spawned and reaped, in this process):");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rounds = a.rounds * 10;
    let mut series = [Series::default(), Series::default(), Series::default()];
    rt.block_on(async {
        for round in 0..rounds + 20 {
            for (way, series) in series.iter_mut().enumerate() {
                let t = std::time::Instant::now();
                match way {
                    0 => {
                        let mut c = tokio::process::Command::new("/bin/true");
                        c.spawn().unwrap().wait().await.unwrap();
                    }
                    1 => {
                        let mut c = tokio::process::Command::new("/bin/true");
                        #[allow(unsafe_code)]
                        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                        unsafe {
                            c.pre_exec(|| {
                                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                                    .map_err(std::io::Error::from)
                            });
                        }
                        c.spawn().unwrap().wait().await.unwrap();
                    }
                    _ => {
                        attache::spawn::Command::new("/bin/true")
                            .spawn()
                            .unwrap()
                            .wait()
                            .await
                            .unwrap();
                    }
                }
                if round >= 20 {
                    series.0.push(t.elapsed());
                }
            }
        }
    });
    let vfork = r.row(
        "spawn_posix",
        "posix_spawn (no death guarantee)",
        &series[0],
    );
    let fork = r.row(
        "spawn_fork_pdeathsig",
        "fork + PR_SET_PDEATHSIG",
        &series[1],
    );
    let clone = r.row(
        "spawn_attache",
        "attache::spawn (clone VM|VFORK + PR_SET_PDEATHSIG)",
        &series[2],
    );
    r.figure("spawn_saved_ms", fork - clone);
    r.target(
        "delegate spawn with the death guarantee, over posix_spawn",
        clone - vfork,
        0.1,
        "ms",
    );
}
