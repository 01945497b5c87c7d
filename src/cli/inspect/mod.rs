//! `attache inspect`: what attache has done on this node, read from its records in cacheDir — one row per
//! attachment; the host-local pools those attachments use, with every allocation and whether a record
//! names it; records whose netns is gone; unreadable records. `--gc` releases the leaked addresses, and
//! tears down the records whose netns is gone that no runtime will DEL any more.
//!
//! The judging and the repairs are `engine::audit`'s; this module reads the arguments, asks for
//! confirmation, and renders (`render`).

mod render;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::engine::audit::{self, GcReport, Judge, Report, StaleRecord, TornDown};
use crate::engine::config::{AttacheConf, DEFAULT_CACHE_DIR, DEFAULT_CONF_DIR, cache_dir_in};
use crate::error::{Error, Result};

use super::table::{plural_es, plural_s};
use render::{leak_line, orphan_line};

/// Shown under `attache inspect --help`.
pub const AFTER_HELP: &str = "\
Leaks: a host-local address (a file <dataDir>/<network>/<ip>) whose container and interface no record in \
cacheDir names. Only a network whose addresses attache alone hands out can leak: one attached natively \
(bridge, macvlan, ipvlan, vlan with host-local) that is not the cluster network. In the cluster network, \
and in any network whose plugin attache execs, an address attache did not record may belong to a pod \
attached before attache was installed: it is listed as \"not recorded by attache\" and never released.\n\n\
--gc releases the leaks (after asking on stderr, unless --yes), each under host-local's lock and only if \
its file still names the same container and interface and no record names it by then. A record whose netns \
is gone is torn down as DEL would (its plugins' DELs, node links, addresses) when no runtime will DEL it \
any more: the runtime's CRI (--cri-socket, by default containerd's or CRI-O's socket when present) does not \
list its sandbox; where no CRI answers, when it is older than --older-than seconds. Otherwise it is \
reported and left to the runtime's DEL or GC.\n\n\
Leaks are judged against one cacheDir: where attache configurations with different cacheDirs share a \
network, inspect them all before --gc.";

/// The configuration `attache install` writes, read for its cacheDir when neither option is given.
const INSTALLED_CONF: &str = "00-attache.conflist";

#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// attache's records (the configuration's cacheDir) [default: the installed configuration's
    /// cacheDir, else /var/lib/attache].
    #[arg(long, conflicts_with = "conf")]
    pub cache_dir: Option<PathBuf>,
    /// Take cacheDir from this attache configuration (.conflist or .conf) [default:
    /// /etc/cni/net.d/00-attache.conflist when it exists].
    #[arg(long)]
    pub conf: Option<PathBuf>,
    /// Print one JSON document instead of tables (full container IDs).
    #[arg(long)]
    pub json: bool,
    /// Release the addresses reported as leaked (never the cluster network's, never a record).
    #[arg(long)]
    pub gc: bool,
    /// With --gc: do not ask.
    #[arg(long, requires = "gc")]
    pub yes: bool,
    /// With --gc: the runtime's CRI socket, asked which pod sandboxes it still has [default:
    /// /run/containerd/containerd.sock, else /var/run/crio/crio.sock, when present].
    #[arg(long, requires = "gc")]
    pub cri_socket: Option<PathBuf>,
    /// With --gc, where no CRI answers: tear down records whose netns is gone once they are this many
    /// seconds old (a runtime without CNI GC never sends their DEL after attache was taken off).
    #[arg(long, requires = "gc")]
    pub older_than: Option<u64>,
    /// Where the runtime keeps pods' network namespaces: those no record names are shown as foreign.
    #[arg(long, default_value = "/run/netns")]
    pub netns_dir: PathBuf,
}

/// Run with the process's stdin (for the confirmation) and stderr.
pub fn run(args: &InspectArgs, out: &mut dyn Write) -> Result<()> {
    run_with(
        args,
        out,
        &mut std::io::stdin().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// Run with the confirmation read from `input` and the question written to `err`.
pub fn run_with(
    args: &InspectArgs,
    out: &mut dyn Write,
    input: &mut dyn BufRead,
    err: &mut dyn Write,
) -> Result<()> {
    let (cache_dir, source) = resolve_cache_dir(args)?;
    let mut report = Report::gather(&cache_dir, source, SystemTime::now());
    // Without an async runtime the foreign namespaces are not looked at; the rest is read all the same.
    if let Ok(rt) = super::runtime() {
        report.foreign = rt.block_on(audit::foreign_netns(&args.netns_dir, &report));
    }
    let w = |e| Error::io("writing the report", e);
    if !args.gc {
        return if args.json {
            write_json(out, &report, None)
        } else {
            out.write_all(render::report(&report).as_bytes()).map_err(w)
        };
    }
    if !args.json {
        out.write_all(render::report(&report).as_bytes())
            .map_err(w)?;
    }
    let leaks = report.leaks();
    let judge = match report.stale_records.is_empty() {
        true => Judge::Unknown("no record whose netns is gone".into()),
        false => match super::runtime() {
            Ok(rt) => rt.block_on(Judge::ask(args.cri_socket.clone(), args.older_than)),
            Err(e) => match args.older_than {
                Some(age) => Judge::Age(age),
                None => Judge::Unknown(e.to_string()),
            },
        },
    };
    let orphans: Vec<&StaleRecord> = report
        .stale_records
        .iter()
        .filter(|r| judge.orphaned(r))
        .collect();
    let confirmed = if (leaks.is_empty() && orphans.is_empty()) || args.yes {
        true
    } else {
        // The list goes where the question goes when stdout carries the JSON document.
        let shown: &mut dyn Write = if args.json { &mut *err } else { &mut *out };
        if !orphans.is_empty() {
            writeln!(
                shown,
                "\nwill tear down, as DEL would ({}):",
                render::judged_by(&judge)
            )
            .map_err(w)?;
            for r in &orphans {
                writeln!(shown, "  {}", orphan_line(r)).map_err(w)?;
            }
        }
        if !leaks.is_empty() {
            writeln!(shown, "\nwill release:").map_err(w)?;
            for (pool, a) in &leaks {
                writeln!(shown, "  {}", leak_line(pool, a)).map_err(w)?;
            }
        }
        write!(
            err,
            "tear down {} record{} and release {} leaked address{}? [y/N] ",
            orphans.len(),
            plural_s(orphans.len()),
            leaks.len(),
            plural_es(leaks.len())
        )
        .map_err(w)?;
        err.flush().map_err(w)?;
        confirm(input)
    };
    let (outcome, torn) = if confirmed {
        // The orphans first: their teardown releases their addresses as DEL does.
        let torn = tear_down(args, &report.cache_dir, &orphans);
        (audit::release_leaks(&report, &leaks), torn)
    } else {
        (GcReport::default(), TornDown::default())
    };
    let gc = GcReport {
        confirmed,
        stale_records_kept: report.stale_records.len() - torn.records.len(),
        torn_down: torn.records,
        stale_records_judged_by: render::judged_by(&judge),
        errors: outcome.errors.into_iter().chain(torn.errors).collect(),
        ..outcome
    };
    if args.json {
        write_json(out, &report, Some(&gc))?;
    } else {
        out.write_all(render::gc(&gc, leaks.len()).as_bytes())
            .map_err(w)?;
    }
    if gc.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Ipam(format!(
            "--gc: {} address{} could not be released: {}",
            gc.errors.len(),
            plural_es(gc.errors.len()),
            gc.errors.join("; ")
        )))
    }
}

/// `--cache-dir`, else the cacheDir of `--conf` (or of the installed configuration), else the default.
fn resolve_cache_dir(args: &InspectArgs) -> Result<(PathBuf, String)> {
    if let Some(d) = &args.cache_dir {
        return Ok((d.clone(), "--cache-dir".into()));
    }
    let conf = installed_conf(args);
    match cache_dir_in(&conf)? {
        Some(d) => Ok((d, conf.display().to_string())),
        None if args.conf.is_some() => Err(Error::io(
            format!("reading {}", conf.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )),
        None => Ok((DEFAULT_CACHE_DIR.into(), "the default".into())),
    }
}

/// `--conf`, else the configuration `attache install` writes.
fn installed_conf(args: &InspectArgs) -> PathBuf {
    args.conf
        .clone()
        .unwrap_or_else(|| Path::new(DEFAULT_CONF_DIR).join(INSTALLED_CONF))
}

/// Tear down the orphans as DEL would, with the installed (or `--conf`) configuration's binDir.
fn tear_down(args: &InspectArgs, cache_dir: &Path, orphans: &[&StaleRecord]) -> TornDown {
    if orphans.is_empty() {
        return TornDown::default();
    }
    let ac = AttacheConf::for_teardown_in(&installed_conf(args), cache_dir);
    // Where delegated plugins are looked for besides binDir: CNI_PATH if set, else the usual place.
    let cni_path: Vec<PathBuf> = std::env::var("CNI_PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_else(|| vec![PathBuf::from("/opt/cni/bin")]);
    match super::runtime() {
        Ok(rt) => rt.block_on(audit::tear_down(&ac, cache_dir, &cni_path, orphans)),
        Err(e) => TornDown {
            records: vec![],
            errors: vec![e.to_string()],
        },
    }
}

/// A yes from the operator: `y` or `yes`, any case. End of input is no.
fn confirm(input: &mut dyn BufRead) -> bool {
    let mut line = String::new();
    match input.take(256).read_line(&mut line) {
        Ok(_) => matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        Err(_) => false,
    }
}

fn write_json(out: &mut dyn Write, report: &Report, gc: Option<&GcReport>) -> Result<()> {
    #[derive(Serialize)]
    struct Doc<'a> {
        #[serde(flatten)]
        report: &'a Report,
        #[serde(skip_serializing_if = "Option::is_none")]
        gc: Option<&'a GcReport>,
    }
    serde_json::to_writer_pretty(&mut *out, &Doc { report, gc })
        .map_err(|e| Error::Internal(format!("writing JSON: {e}")))?;
    writeln!(out).map_err(|e| Error::io("writing the report", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::spec::Version;
    use crate::engine::record::{AttachmentRecord, PodRecord, RecordStore};
    use crate::k8s::PodRef;
    use serde_json::{Value, json};

    /// A record of one pod: the cluster network (exec'd ptp, host-local `cluster`) and a native bridge
    /// (host-local `blue`), both in `ipam`.
    fn record(ipam: &Path, id: &str, pod: &str, netns: &str, ips: [&str; 2]) -> PodRecord {
        let chain = |name: &str, t: &str, subnet: &str| {
            json!({"cniVersion": "1.0.0", "name": name, "plugins": [
                {"type": t, "ipam": {"type": "host-local", "subnet": subnet, "dataDir": ipam}}]})
        };
        let result = |ifname: &str, mac: &str, ip: &str| {
            json!({"cniVersion": "1.1.0",
                   "interfaces": [{"name": "veth1", "mac": "00:00:00:00:00:01"},
                                  {"name": ifname, "mac": mac, "sandbox": netns}],
                   "ips": [{"address": ip, "interface": 1}]})
        };
        let att = |network: &str, ifname: &str, conf: Value, result: Value| AttachmentRecord {
            result: Some(
                crate::cni::spec::CniResult::from_value(&result, Version::V1_1_0).unwrap(),
            ),
            ..AttachmentRecord::new(
                network,
                ifname,
                crate::engine::chain::NetworkList::from_value(&conf, "1.1.0").unwrap(),
            )
        };
        let mut r = PodRecord::new(id, "eth0", Some(Path::new(netns)));
        r.network = "attache".into();
        r.pod = Some(PodRef {
            namespace: "team-a".into(),
            name: pod.into(),
            uid: String::new(),
        });
        r.complete = true;
        r.attachments = vec![
            att(
                "cluster",
                "eth0",
                chain("cluster", "ptp", "10.77.0.0/24"),
                result("eth0", "0a:00:00:00:00:01", ips[0]),
            ),
            att(
                "team-a/blue",
                "net1",
                chain("blue", "bridge", "10.21.0.0/24"),
                result("net1", "0a:00:00:00:00:02", ips[1]),
            ),
        ];
        r
    }

    fn hold(ipam: &Path, network: &str, ip: &str, content: &str) {
        std::fs::create_dir_all(ipam.join(network)).unwrap();
        std::fs::write(ipam.join(network).join(ip), content).unwrap();
    }

    fn args(cache: &Path) -> InspectArgs {
        InspectArgs {
            cache_dir: Some(cache.to_path_buf()),
            conf: None,
            json: false,
            gc: false,
            yes: false,
            // No runtime to ask: records whose netns is gone are kept unless a test says otherwise.
            cri_socket: Some(cache.join("no-cri.sock")),
            older_than: None,
            netns_dir: cache.join("no-netns"),
        }
    }

    fn run_str(a: &InspectArgs, stdin: &str) -> (Result<()>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = run_with(a, &mut out, &mut stdin.as_bytes(), &mut err);
        (
            r,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn report_leaks_and_gc() {
        let d = crate::testutil::tempdir("inspect");
        let (cache, ipam) = (d.join("cache"), d.join("ipam"));
        // A missing cacheDir is an empty node, not an error.
        let (r, out, _) = run_str(&args(&cache), "");
        r.unwrap();
        assert!(out.contains("no attachments"), "{out}");

        let store = RecordStore::new(&cache);
        let live = record(
            &ipam,
            "aaaa00000000live",
            "web-0",
            "/proc/self/ns/net",
            ["10.77.0.2/24", "10.21.0.2/24"],
        );
        let gone = record(
            &ipam,
            "bbbb00000000gone",
            "web-1",
            "/nonexistent/netns",
            ["10.77.0.3/24", "10.21.0.3/24"],
        );
        store.save(&live).unwrap();
        store.save(&gone).unwrap();
        for (ip, id, ifname) in [
            ("10.77.0.2", "aaaa00000000live", "eth0"),
            ("10.21.0.2", "aaaa00000000live", "net1"),
            ("10.77.0.3", "bbbb00000000gone", "eth0"),
            ("10.21.0.3", "bbbb00000000gone", "net1"),
        ] {
            hold(
                &ipam,
                if ip.starts_with("10.77") {
                    "cluster"
                } else {
                    "blue"
                },
                ip,
                &format!("{id}\r\n{ifname}"),
            );
        }
        hold(&ipam, "blue", "10.21.0.9", "deadbeef0000leak\r\nnet1");
        hold(&ipam, "blue", "10.21.0.10", "cccc0000000unread\r\nnet1");
        hold(&ipam, "cluster", "10.77.0.50", "preattache000000\r\neth0");
        // A record that cannot be read protects its container's addresses.
        std::fs::create_dir_all(cache.join("cccc0000000unread")).unwrap();
        std::fs::write(cache.join("cccc0000000unread/eth0.json"), "{").unwrap();

        let (r, out, _) = run_str(&args(&cache), "");
        r.unwrap();
        for want in [
            "team-a/web-0  aaaa00000000  eth0   cluster",
            "10.77.0.2/24",
            "0a:00:00:00:00:02",
            "team-a/blue",
            "bridge",
            "native",
            "ptp",
            "exec",
            "netns-gone",
            "blue     attache  10.21.0.0/24  4     249   1",
            "cluster  shared   10.77.0.0/24  3     250   0       1",
            "10.21.0.9   deadbeef0000  net1   -             LEAKED",
            "10.77.0.50  preattache00  eth0   -             not recorded by attache",
            "record unreadable",
            "/nonexistent/netns",
            "UNREADABLE RECORDS",
            "1 leaked address (attache inspect --gc releases it)",
        ] {
            assert!(out.contains(want), "{want:?} missing in\n{out}");
        }

        // JSON: the same facts, full IDs.
        let mut a = args(&cache);
        a.json = true;
        let (r, out, _) = run_str(&a, "");
        r.unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["attachments"].as_array().unwrap().len(), 4);
        assert_eq!(v["attachments"][0]["container_id"], "aaaa00000000live");
        assert_eq!(v["attachments"][1]["ips"], json!(["10.21.0.2/24"]));
        assert_eq!(v["stale_records"][0]["container_id"], "bbbb00000000gone");
        assert_eq!(v["unreadable_records"].as_array().unwrap().len(), 1);
        let blue = &v["pools"][0];
        assert_eq!(
            (
                blue["network"].as_str(),
                blue["used"].as_u64(),
                blue["free"].as_u64()
            ),
            (Some("blue"), Some(4), Some(249))
        );

        // --gc, declined: nothing goes.
        let mut a = args(&cache);
        a.gc = true;
        let (r, out, err) = run_str(&a, "n\n");
        r.unwrap();
        assert!(err.contains("release 1 leaked address? [y/N]"), "{err}");
        assert!(out.contains("will release:\n  10.21.0.9 in blue"), "{out}");
        assert!(out.contains("not confirmed: nothing released"), "{out}");
        assert!(ipam.join("blue/10.21.0.9").exists());

        // Re-used between the listing and the lock: kept.
        let report = Report::gather(&cache, String::new(), SystemTime::now());
        let leaks = report.leaks();
        hold(&ipam, "blue", "10.21.0.9", "newcomer00000000\r\nnet1");
        let g = audit::release_leaks(&report, &leaks);
        assert!(g.released.is_empty());
        assert!(
            g.kept[0].reason.as_deref().unwrap().contains("re-used"),
            "{g:?}"
        );
        hold(&ipam, "blue", "10.21.0.9", "deadbeef0000leak\r\nnet1");

        // --gc --yes: exactly the leak goes.
        a.yes = true;
        a.json = true;
        let (r, out, err) = run_str(&a, "");
        r.unwrap();
        assert!(err.is_empty(), "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["gc"]["released"][0]["ip"], "10.21.0.9");
        assert_eq!(v["gc"]["stale_records_kept"], 1);
        assert!(!ipam.join("blue/10.21.0.9").exists());
        for kept in [
            "blue/10.21.0.2",
            "blue/10.21.0.3",
            "blue/10.21.0.10",
            "cluster/10.77.0.50",
            "cluster/10.77.0.3",
        ] {
            assert!(ipam.join(kept).exists(), "{kept}");
        }
        assert!(
            cache.join("bbbb00000000gone/eth0.json").exists(),
            "records are never removed"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
