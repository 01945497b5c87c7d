//! Per-node metrics without a daemon: every invocation but VERSION adds itself to counters and latency
//! histograms kept in `<metricsDir>/attache.prom`, in the Prometheus text format (0.0.4) that node
//! exporter's textfile collector reads. The file is its own state: read back, updated, rewritten.
//!
//! ```text
//! <metricsDir>/attache.prom                         the metrics (mode 0644: the exporter reads it)
//! <metricsDir>/.attache.<pid>.<n>.tmp              its next version, renamed over it (the collector reads only *.prom)
//! <metricsDir>/.attache-metrics.lock                flock'ed for one update
//! <metricsDir>/.attache-metrics.pending.<pid>.<ns>  one sample whose process found the lock busy
//! <metricsDir>/.attache-metrics.skipped.<pid>.<ns>  (older versions: an update given up, counted as skipped)
//! ```
//!
//! The cost is bounded: one lock (waited for at most [`LOCK_WAIT`]), one listing of the folder, one read
//! and one write of a file of a few KiB (every label takes its values from a bounded set, so the file
//! cannot grow without bound). A burst does not serialize every process on the lock, nor lose a count:
//! a process that finds the lock busy leaves its sample as a pending file and goes, and whoever holds the
//! lock folds the pending samples in — after releasing it, each updater looks once more and takes the
//! lock again if samples arrived meanwhile, so the last of a burst is not left waiting for the next
//! invocation. Metrics never fail an invocation: [`record`]'s errors are for the log.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// The metrics file; the textfile collector reads every `*.prom` of its folder.
pub const FILE: &str = "attache.prom";
const LOCK: &str = ".attache-metrics.lock";
const SKIPPED_PREFIX: &str = ".attache-metrics.skipped.";
const PENDING_PREFIX: &str = ".attache-metrics.pending.";
const WRITING_PREFIX: &str = ".attache-metrics.writing.";
/// How many times one process folds in samples that arrived while it held the lock, at most.
const MAX_FOLDS: usize = 8;
/// The largest pending sample read back.
const MAX_PENDING: u64 = 4096;
/// How long an invocation waits for another one's update before it leaves its sample pending.
pub const LOCK_WAIT: Duration = Duration::from_millis(50);
/// Upper bounds (seconds) of the latency histogram's buckets; `+Inf` follows.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// [`BUCKETS`] as the `le` label spells them.
const LE: [&str; BUCKETS.len()] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
];
/// Distinct `plugin` label values kept; failures of further plugins are counted as [`OTHER`].
pub const MAX_PLUGINS: usize = 64;
/// Distinct `code` label values kept (delegates pass any code through); further ones are [`OTHER`].
pub const MAX_CODES: usize = 32;
/// The label value standing for everything beyond a cap.
pub const OTHER: &str = "other";
/// A metrics file larger than this is not attache's: it is started afresh.
const MAX_FILE: u64 = 1 << 20;

const INVOCATIONS: &str = "attache_invocations_total";
const DURATION: &str = "attache_invocation_duration_seconds";
const DURATION_BUCKET: &str = "attache_invocation_duration_seconds_bucket";
const DURATION_SUM: &str = "attache_invocation_duration_seconds_sum";
const DURATION_COUNT: &str = "attache_invocation_duration_seconds_count";
const PLUGIN_FAILURES: &str = "attache_plugin_failures_total";
const SKIPPED: &str = "attache_metrics_skipped_total";
const LAST_UPDATE: &str = "attache_metrics_last_update_timestamp_seconds";

/// How an invocation ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome<'a> {
    Success,
    /// The CNI error code answered, and the plugin that failed: a delegated plugin's type, else
    /// attache's own role.
    Error {
        code: u32,
        plugin: &'a str,
    },
}

/// One finished invocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// `ADD`, `DEL`, `CHECK`, `STATUS` or `GC`.
    pub command: &'a str,
    /// attache's role: `attache`, a native driver's name, or `unknown`.
    pub kind: &'a str,
    pub outcome: Outcome<'a>,
    pub seconds: f64,
}

/// The latency of one (command, type): cumulative counts per bucket of [`BUCKETS`], the `+Inf` bucket
/// being `count`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (n, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= le {
                *n = n.saturating_add(1);
            }
        }
        self.sum += seconds;
        self.count = self.count.saturating_add(1);
    }

    fn is_consistent(&self) -> bool {
        self.buckets.windows(2).all(|w| w[0] <= w[1])
            && self.buckets.last().is_none_or(|&n| n <= self.count)
            && self.sum.is_finite()
            && self.sum >= 0.0
    }
}

/// Everything the metrics file says, keyed by label values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// (command, type, outcome, code) -> invocations.
    pub invocations: BTreeMap<[String; 4], u64>,
    /// (command, type) -> latency.
    pub durations: BTreeMap<[String; 2], Histogram>,
    /// (command, plugin) -> failures.
    pub plugin_failures: BTreeMap<[String; 2], u64>,
    pub skipped: u64,
}

impl State {
    /// Count one invocation.
    pub fn observe(&mut self, s: &Sample<'_>) {
        let (outcome, code) = match s.outcome {
            Outcome::Success => ("success", "0".to_string()),
            Outcome::Error { code, .. } => ("error", self.code_label(code)),
        };
        let key = [s.command, s.kind, outcome, &code].map(str::to_string);
        let n = self.invocations.entry(key).or_default();
        *n = n.saturating_add(1);
        self.durations
            .entry([s.command, s.kind].map(str::to_string))
            .or_default()
            .observe(s.seconds.max(0.0));
        if let Outcome::Error { plugin, .. } = s.outcome {
            let key = [s.command.to_string(), self.plugin_label(plugin)];
            let n = self.plugin_failures.entry(key).or_default();
            *n = n.saturating_add(1);
        }
    }

    fn code_label(&self, code: u32) -> String {
        let code = code.to_string();
        let known: BTreeSet<&str> = self
            .invocations
            .keys()
            .map(|k| k[3].as_str())
            .filter(|c| *c != OTHER)
            .collect();
        if known.contains(code.as_str()) || known.len() < MAX_CODES {
            code
        } else {
            OTHER.into()
        }
    }

    fn plugin_label(&self, plugin: &str) -> String {
        let known: BTreeSet<&str> = self
            .plugin_failures
            .keys()
            .map(|k| k[1].as_str())
            .filter(|p| *p != OTHER)
            .collect();
        if known.contains(plugin) || known.len() < MAX_PLUGINS {
            plugin.into()
        } else {
            OTHER.into()
        }
    }

    /// The exposition text, families in a fixed order, series sorted; `now` is the update's Unix time.
    pub fn render(&self, now: f64) -> String {
        let mut out = String::with_capacity(4096);
        family(
            &mut out,
            INVOCATIONS,
            "counter",
            "CNI invocations of attache by command, type (attache, or the native driver in drop-in mode), outcome (success or error) and CNI error code (0 for success).",
        );
        for ([command, kind, outcome, code], n) in &self.invocations {
            let labels = [
                ("command", command.as_str()),
                ("type", kind),
                ("outcome", outcome),
                ("code", code),
            ];
            series(&mut out, INVOCATIONS, &labels, n);
        }
        family(
            &mut out,
            DURATION,
            "histogram",
            "Time from the start of a CNI invocation to its answer, by command and type.",
        );
        for ([command, kind], h) in &self.durations {
            let labels = [("command", command.as_str()), ("type", kind)];
            for (le, n) in LE.iter().zip(h.buckets) {
                series(
                    &mut out,
                    DURATION_BUCKET,
                    &[labels[0], labels[1], ("le", le)],
                    n,
                );
            }
            series(
                &mut out,
                DURATION_BUCKET,
                &[labels[0], labels[1], ("le", "+Inf")],
                h.count,
            );
            series(&mut out, DURATION_SUM, &labels, h.sum);
            series(&mut out, DURATION_COUNT, &labels, h.count);
        }
        family(
            &mut out,
            PLUGIN_FAILURES,
            "counter",
            "Failed CNI invocations by command and the plugin that failed: a delegated plugin's type, else attache's own type.",
        );
        for ([command, plugin], n) in &self.plugin_failures {
            let labels = [("command", command.as_str()), ("plugin", plugin)];
            series(&mut out, PLUGIN_FAILURES, &labels, n);
        }
        family(
            &mut out,
            SKIPPED,
            "counter",
            "Invocations missing from the other metrics: their update found the metrics lock busy for longer than 50 ms.",
        );
        series(&mut out, SKIPPED, &[], self.skipped);
        family(
            &mut out,
            LAST_UPDATE,
            "gauge",
            "When attache last wrote this file (Unix time, seconds).",
        );
        series(&mut out, LAST_UPDATE, &[], now);
        out
    }

    /// Read back what [`State::render`] wrote. Lines that are not attache's series, or that do not parse,
    /// are ignored; a histogram whose buckets do not match [`BUCKETS`] starts afresh.
    pub fn parse(text: &str) -> State {
        #[derive(Default)]
        struct Partial {
            buckets: [Option<u64>; BUCKETS.len()],
            sum: Option<f64>,
            count: Option<u64>,
        }
        let mut st = State::default();
        // A histogram's lines are consecutive: the one being read is the last.
        let mut partial: Vec<([String; 2], Partial)> = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(Series {
                name,
                labels,
                value,
            }) = Series::parse(line)
            else {
                continue;
            };
            let get = |k: &str| labels.iter().find(|(l, _)| *l == k).map(|(_, v)| &**v);
            let own = |keys: &[&str]| {
                keys.iter()
                    .map(|k| get(k).map(str::to_string))
                    .collect::<Option<Vec<String>>>()
            };
            match name {
                INVOCATIONS => {
                    let key = own(&["command", "type", "outcome", "code"])
                        .and_then(|k| <[String; 4]>::try_from(k).ok());
                    if let (Some(key), Some(n)) = (key, counter(value)) {
                        st.invocations.insert(key, n);
                    }
                }
                PLUGIN_FAILURES => {
                    let key =
                        own(&["command", "plugin"]).and_then(|k| <[String; 2]>::try_from(k).ok());
                    if let (Some(key), Some(n)) = (key, counter(value)) {
                        st.plugin_failures.insert(key, n);
                    }
                }
                SKIPPED => st.skipped = counter(value).unwrap_or(0),
                DURATION_BUCKET | DURATION_SUM | DURATION_COUNT => {
                    let (Some(command), Some(kind)) = (get("command"), get("type")) else {
                        continue;
                    };
                    if partial
                        .last()
                        .is_none_or(|(k, _)| k[0] != command || k[1] != kind)
                    {
                        let key = [command.to_string(), kind.to_string()];
                        partial.push((key, Partial::default()));
                    }
                    let Some((_, p)) = partial.last_mut() else {
                        continue;
                    };
                    match name {
                        DURATION_SUM => p.sum = value.parse().ok(),
                        DURATION_COUNT => p.count = counter(value),
                        _ => {
                            if let Some(i) =
                                get("le").and_then(|le| LE.iter().position(|l| *l == le))
                            {
                                p.buckets[i] = counter(value);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for (key, p) in partial {
            let (Some(sum), Some(count)) = (p.sum, p.count) else {
                continue;
            };
            if p.buckets.iter().any(Option::is_none) {
                continue;
            }
            let h = Histogram {
                buckets: p.buckets.map(Option::unwrap_or_default),
                sum,
                count,
            };
            // A histogram split over the file, or inconsistent, is not one attache wrote: it starts afresh.
            if h.is_consistent() && !st.durations.contains_key(&key) {
                st.durations.insert(key, h);
            }
        }
        st
    }
}

fn counter(value: &str) -> Option<u64> {
    value.parse().ok()
}

/// The `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn series(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"");
            escape_label_into(out, v);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the text format quotes it: `\`, `"` and line feeds escaped.
fn escape_label_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// One line of the text format: `name{k="v",...} value` (or `name value`), label values unescaped.
struct Series<'a> {
    name: &'a str,
    labels: Vec<(&'a str, Cow<'a, str>)>,
    value: &'a str,
}

impl<'a> Series<'a> {
    /// Byte-wise: every delimiter is ASCII, so every index found is a char boundary.
    fn parse(line: &'a str) -> Option<Series<'a>> {
        let b = line.as_bytes();
        let mut i = b.iter().position(|c| matches!(c, b'{' | b' ' | b'\t'))?;
        let name = &line[..i];
        let mut labels = Vec::new();
        if b[i] == b'{' {
            i += 1;
            loop {
                while matches!(b.get(i)?, b' ' | b',') {
                    i += 1;
                }
                if b[i] == b'}' {
                    i += 1;
                    break;
                }
                let eq = i + b[i..].iter().position(|c| *c == b'=')?;
                let key = line[i..eq].trim();
                i = eq + 1;
                while *b.get(i)? == b' ' {
                    i += 1;
                }
                if b[i] != b'"' {
                    return None;
                }
                let start = i + 1;
                let mut escaped = false;
                i = start;
                loop {
                    match *b.get(i)? {
                        b'"' => break,
                        b'\\' => (i, escaped) = (i + 2, true),
                        _ => i += 1,
                    }
                }
                let raw = &line[start..i];
                i += 1;
                labels.push((
                    key,
                    if escaped {
                        Cow::Owned(unescape_label(raw))
                    } else {
                        Cow::Borrowed(raw)
                    },
                ));
            }
        }
        let value = line[i..].trim_start_matches([' ', '\t']);
        let end = value
            .bytes()
            .position(|c| matches!(c, b' ' | b'\t'))
            .unwrap_or(value.len());
        (end > 0).then(|| Series {
            name,
            labels,
            value: &value[..end],
        })
    }
}

fn unescape_label(raw: &str) -> String {
    let mut s = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => s.push('\n'),
                Some(c) => s.push(c),
                None => {}
            },
            (c, false) => s.push(c),
        }
    }
    s
}

/// What became of one update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Written,
    /// The lock stayed busy for [`LOCK_WAIT`]: the sample is pending, for the lock's holder to fold in.
    Pending,
}

/// `metricsDir` read straight from the raw keys, as `logFile` is: an invocation is counted whether or
/// not the rest of the configuration validates, in every mode. Only an absolute path counts.
pub fn dir_of(raw: &serde_json::Map<String, serde_json::Value>) -> Option<std::path::PathBuf> {
    raw.get("metricsDir")
        .and_then(serde_json::Value::as_str)
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// Add `sample` to `<dir>/attache.prom` (creating `dir`): under the folder's lock, read the file back,
/// fold in the pending samples and the skipped markers, add the sample, and replace the file by rename.
/// With the lock busy for [`LOCK_WAIT`], the sample is left pending; then, and after an update, the
/// pending samples that arrived meanwhile are folded in by whoever can take the lock.
pub fn record(dir: &Path, sample: &Sample<'_>) -> Result<Recorded> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let lock_path = dir.join(LOCK);
    let lock = |wait| -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
        let f = crate::files::open_lock(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        crate::files::lock_within(f, wait)
            .map_err(|errno| Error::kernel(format!("locking {}", lock_path.display()), errno))
    };
    let outcome = match lock(LOCK_WAIT)? {
        Some(held) => {
            update(dir, Some(sample))?;
            drop(held);
            Recorded::Written
        }
        None => {
            write_pending(dir, sample)?;
            Recorded::Pending
        }
    };
    // Samples left pending while the lock was held (by this process or another) are folded in now: a
    // holder that listed the folder before they were written would leave them to the next invocation.
    // Whoever wrote one tried the lock after writing it, so it is seen by the holder it lost to.
    for _ in 0..MAX_FOLDS {
        if !has_pending(dir) {
            break;
        }
        match lock(Duration::ZERO)? {
            Some(held) => {
                update(dir, None)?;
                drop(held);
            }
            None => break, // its holder looks again after releasing it
        }
    }
    Ok(outcome)
}

/// One update, under the lock: the file read back, pending samples and skipped markers folded in,
/// `sample` added, the file replaced.
fn update(dir: &Path, sample: Option<&Sample<'_>>) -> Result<()> {
    let path = dir.join(FILE);
    let mut state = match crate::files::read_bounded(&path, MAX_FILE) {
        Ok(bytes) => State::parse(&String::from_utf8_lossy(&bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => State::default(),
        Err(e) => {
            tracing::warn!(
                "metrics: {} is unreadable ({e}); starting it afresh",
                path.display()
            );
            State::default()
        }
    };
    let (skipped, pending) = collect(dir);
    state.skipped = state.skipped.saturating_add(skipped);
    for p in &pending {
        match p {
            Some(p) => state.observe(&p.sample()),
            None => state.skipped = state.skipped.saturating_add(1),
        }
    }
    if let Some(s) = sample {
        state.observe(s);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    replace(dir, state.render(now).as_bytes())
}

/// A sample as a pending file holds it: `command kind code plugin seconds` (code 0: success), one line.
struct PendingSample {
    command: String,
    kind: String,
    code: u32,
    plugin: String,
    seconds: f64,
}

impl PendingSample {
    fn line(s: &Sample<'_>) -> String {
        let (code, plugin) = match s.outcome {
            Outcome::Success => (0, "-"),
            Outcome::Error { code, plugin } => (code, plugin),
        };
        format!("{} {} {code} {plugin} {}\n", s.command, s.kind, s.seconds)
    }

    fn parse(text: &str) -> Option<PendingSample> {
        let mut f = text.trim_end_matches('\n').split(' ');
        let p = PendingSample {
            command: f.next()?.to_string(),
            kind: f.next()?.to_string(),
            code: f.next()?.parse().ok()?,
            plugin: f.next()?.to_string(),
            seconds: f
                .next()?
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)?,
        };
        f.next().is_none().then_some(p)
    }

    fn sample(&self) -> Sample<'_> {
        Sample {
            command: &self.command,
            kind: &self.kind,
            outcome: match self.code {
                0 => Outcome::Success,
                code => Outcome::Error {
                    code,
                    plugin: &self.plugin,
                },
            },
            seconds: self.seconds,
        }
    }
}

/// Leave a sample for the lock's holder: a new file of its own (written whole under a temporary name,
/// then renamed), so that none is lost or counted twice — each is counted by whoever removes it.
fn write_pending(dir: &Path, sample: &Sample<'_>) -> Result<()> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("{}.{nanos}", std::process::id());
    let tmp = dir.join(format!("{WRITING_PREFIX}{name}"));
    let p = dir.join(format!("{PENDING_PREFIX}{name}"));
    let written = crate::files::write_new(&tmp, PendingSample::line(sample).as_bytes(), 0o600)
        .and_then(|_| std::fs::rename(&tmp, &p));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("creating {}", p.display()), e)
    })
}

fn has_pending(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name()
                .as_encoded_bytes()
                .starts_with(PENDING_PREFIX.as_bytes())
        })
    })
}

/// What the folder holds for the lock holder, found in one listing (and removed): skipped-update markers
/// of older versions, and pending samples (`None`: one that does not read as a sample). Leftovers of
/// killed writers go too: a metrics temporary (only the lock holder writes one) and a pending sample
/// whose writer died before its rename.
fn collect(dir: &Path) -> (u64, Vec<Option<PendingSample>>) {
    let (mut skipped, mut pending) = (0, Vec::new());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (skipped, pending);
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = e.path();
        if name.starts_with(SKIPPED_PREFIX) {
            skipped += u64::from(std::fs::remove_file(&path).is_ok());
        } else if name.starts_with(PENDING_PREFIX) {
            let text = crate::files::read_bounded(&path, MAX_PENDING).ok();
            if std::fs::remove_file(&path).is_ok() {
                pending.push(
                    text.and_then(|b| String::from_utf8(b).ok())
                        .and_then(|t| PendingSample::parse(&t)),
                );
            }
        } else if let Some(rest) = name.strip_prefix(WRITING_PREFIX) {
            let writer = rest.split('.').next().and_then(|p| p.parse().ok());
            if !writer.is_some_and(crate::files::pid_alive) {
                let _ = std::fs::remove_file(&path);
            }
        } else if name.starts_with(".attache.") && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(&path);
        }
    }
    (skipped, pending)
}

/// Write the metrics file whole ([`crate::files::replace`]: its temporary, `.attache.<pid>.<n>.tmp`, is
/// not `*.prom`, so the collector never reads it; a killed writer's goes with [`collect`]).
fn replace(dir: &Path, bytes: &[u8]) -> Result<()> {
    let path = dir.join(FILE);
    crate::files::replace(&path, bytes, 0o644, false)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::tempdir;
    use nix::fcntl::{Flock, FlockArg};
    use std::fs::File;
    use std::time::Instant;

    fn ok<'a>(command: &'a str, kind: &'a str, seconds: f64) -> Sample<'a> {
        Sample {
            command,
            kind,
            outcome: Outcome::Success,
            seconds,
        }
    }

    fn failed<'a>(command: &'a str, code: u32, plugin: &'a str) -> Sample<'a> {
        Sample {
            command,
            kind: "attache",
            outcome: Outcome::Error { code, plugin },
            seconds: 0.3,
        }
    }

    /// Every non-comment line's series name and value, checked against the text format's grammar.
    type Labels = Vec<(String, String)>;

    fn samples(text: &str) -> Vec<(String, Labels, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let Series {
                    name,
                    labels,
                    value,
                } = Series::parse(l).expect(l);
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                    "{l}"
                );
                let v = if value == "+Inf" {
                    f64::INFINITY
                } else {
                    value.parse().expect(l)
                };
                let labels = labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into_owned()))
                    .collect();
                (name.to_string(), labels, v)
            })
            .collect()
    }

    #[test]
    fn every_family_has_help_and_type_before_its_series() {
        let mut st = State::default();
        st.observe(&ok("ADD", "attache", 0.02));
        st.observe(&failed("DEL", 5, "ptp"));
        let text = st.render(1.7e9);
        let families = [
            (INVOCATIONS, "counter"),
            (DURATION, "histogram"),
            (PLUGIN_FAILURES, "counter"),
            (SKIPPED, "counter"),
            (LAST_UPDATE, "gauge"),
        ];
        let lines: Vec<&str> = text.lines().collect();
        for (name, kind) in families {
            let help = lines
                .iter()
                .position(|l| l.starts_with(&format!("# HELP {name} ")))
                .expect(name);
            assert_eq!(lines[help + 1], format!("# TYPE {name} {kind}"));
            // Every series of the family comes after its TYPE line and before the next family.
            for (i, l) in lines.iter().enumerate() {
                if !l.starts_with('#') && l.starts_with(name) {
                    assert!(i > help + 1, "{l}");
                }
            }
        }
        assert!(text.ends_with('\n'));
        assert!(text.contains(
            "attache_invocations_total{command=\"ADD\",type=\"attache\",outcome=\"success\",code=\"0\"} 1\n"
        ));
        assert!(text.contains(
            "attache_invocations_total{command=\"DEL\",type=\"attache\",outcome=\"error\",code=\"5\"} 1\n"
        ));
        assert!(text.contains("attache_plugin_failures_total{command=\"DEL\",plugin=\"ptp\"} 1\n"));
        assert!(text.contains("attache_metrics_skipped_total 0\n"));
        assert!(text.contains("attache_metrics_last_update_timestamp_seconds 1700000000\n"));
        samples(&text);
    }

    #[test]
    fn le_labels_spell_the_buckets() {
        for (le, b) in LE.iter().zip(BUCKETS) {
            assert_eq!(le.parse::<f64>().unwrap(), b);
            assert_eq!(*le, b.to_string());
        }
        assert!(BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_count() {
        let mut st = State::default();
        for s in [0.001, 0.004, 0.02, 0.3, 0.3, 7.0, 60.0] {
            st.observe(&ok("ADD", "bridge", s));
        }
        let text = st.render(0.0);
        let all = samples(&text);
        let buckets: Vec<(String, f64)> = all
            .iter()
            .filter(|(n, _, _)| n == "attache_invocation_duration_seconds_bucket")
            .map(|(_, l, v)| {
                let le = l.iter().find(|(k, _)| k == "le").unwrap().1.clone();
                (le, *v)
            })
            .collect();
        let les: Vec<&str> = buckets.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            les,
            [
                "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
                "+Inf"
            ]
        );
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{text}");
        let counts: Vec<f64> = buckets.iter().map(|b| b.1).collect();
        assert_eq!(counts, [2., 2., 3., 3., 3., 3., 5., 5., 5., 5., 6., 7.]);
        let value = |name: &str| all.iter().find(|(n, _, _)| n == name).unwrap().2;
        assert_eq!(value("attache_invocation_duration_seconds_count"), 7.0);
        assert!((value("attache_invocation_duration_seconds_sum") - 67.625).abs() < 1e-9);
    }

    #[test]
    fn label_values_are_escaped_and_read_back() {
        let mut st = State::default();
        let odd = "we\"ird\\plug\nin";
        st.observe(&failed("ADD", 999, odd));
        let text = st.render(0.0);
        assert!(text.contains(r#"plugin="we\"ird\\plug\nin"} 1"#), "{text}");
        assert_eq!(text.lines().filter(|l| l.contains("plugin=")).count(), 1);
        assert_eq!(State::parse(&text), st);
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let mut st = State::default();
        for i in 0..50 {
            st.observe(&ok(
                ["ADD", "DEL", "CHECK"][i % 3],
                "attache",
                i as f64 / 97.0,
            ));
        }
        st.observe(&ok("GC", "macvlan", 0.0001));
        st.observe(&failed("ADD", 11, "calico"));
        st.observe(&failed("STATUS", 50, "attache"));
        st.skipped = 3;
        let text = st.render(1.5);
        let back = State::parse(&text);
        assert_eq!(back, st);
        assert_eq!(back.render(1.5), text);
        // Foreign or broken lines are ignored; a histogram missing a bucket starts afresh.
        let mangled = format!(
            "{}\nsome_other_metric 4\nattache_invocations_total{{command=\"ADD\" 3\ngarbage\n",
            text.replace(
                "attache_invocation_duration_seconds_bucket{command=\"GC\",type=\"macvlan\",le=\"0.005\"} 1\n",
                ""
            )
        );
        let back = State::parse(&mangled);
        assert_eq!(back.invocations, st.invocations);
        assert_eq!(back.durations.len(), st.durations.len() - 1);
        assert_eq!(State::parse(""), State::default());
    }

    #[test]
    fn plugin_and_code_labels_are_capped() {
        let mut st = State::default();
        let names: Vec<String> = (0..MAX_PLUGINS + 6).map(|i| format!("p{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            st.observe(&failed("ADD", 100 + i as u32, n));
        }
        // A plugin already seen keeps its own label past the cap.
        st.observe(&failed("DEL", 7, "p0"));
        let plugins: BTreeSet<&str> = st.plugin_failures.keys().map(|k| k[1].as_str()).collect();
        assert_eq!(plugins.len(), MAX_PLUGINS + 1);
        assert!(plugins.contains(OTHER));
        assert_eq!(st.plugin_failures[&["ADD".into(), OTHER.into()]], 6);
        assert_eq!(st.plugin_failures[&["DEL".into(), "p0".into()]], 1);
        let codes: BTreeSet<&str> = st.invocations.keys().map(|k| k[3].as_str()).collect();
        assert_eq!(codes.len(), MAX_CODES + 1, "{codes:?}");
        let total: u64 = st.invocations.values().sum();
        assert_eq!(total, (MAX_PLUGINS + 7) as u64);
        // The caps hold after a round trip through the file too.
        let mut back = State::parse(&st.render(0.0));
        back.observe(&failed("ADD", 4242, "fresh"));
        assert_eq!(back.plugin_failures[&["ADD".into(), OTHER.into()]], 7);
    }

    #[test]
    fn record_accumulates_and_writes_atomically() {
        let d = tempdir("metrics-record");
        let dir = d.join("sub/metrics");
        for i in 0..5 {
            assert_eq!(
                record(&dir, &ok("ADD", "attache", 0.001 * i as f64)).unwrap(),
                Recorded::Written
            );
        }
        // A killed writer's temporary is replaced, never read.
        std::fs::write(dir.join(".attache.999999999.0.tmp"), "junk").unwrap();
        std::fs::write(dir.join(".attache.prom.tmp"), "junk").unwrap(); // an older version's name
        record(&dir, &failed("DEL", 7, "attache")).unwrap();
        let st = State::parse(&std::fs::read_to_string(dir.join(FILE)).unwrap());
        let key = ["ADD", "attache", "success", "0"].map(String::from);
        assert_eq!(st.invocations[&key], 5);
        assert_eq!(st.durations[&["ADD".into(), "attache".into()]].count, 5);
        assert_eq!(st.plugin_failures[&["DEL".into(), "attache".into()]], 1);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".attache-metrics.lock", "attache.prom"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777 & !0o022, 0o644 & !0o022);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_busy_lock_leaves_the_sample_pending_and_the_next_update_counts_it() {
        let d = tempdir("metrics-skip");
        record(&d, &ok("ADD", "attache", 0.01)).unwrap();
        let held = Flock::lock(
            File::open(d.join(LOCK)).unwrap(),
            FlockArg::LockExclusiveNonblock,
        )
        .map_err(|(_, e)| e)
        .unwrap();
        let t = Instant::now();
        assert_eq!(
            record(&d, &ok("ADD", "attache", 0.01)).unwrap(),
            Recorded::Pending
        );
        let waited = t.elapsed();
        assert!(waited >= LOCK_WAIT && waited < LOCK_WAIT * 4, "{waited:?}");
        assert_eq!(
            record(&d, &failed("CHECK", 7, "attache")).unwrap(),
            Recorded::Pending
        );
        // An older version's marker, and a pending file that is not a sample: counted as skipped.
        std::fs::write(d.join(format!("{SKIPPED_PREFIX}1.2")), "").unwrap();
        std::fs::write(d.join(format!("{PENDING_PREFIX}1.3")), "garbage").unwrap();
        // A pending sample whose writer died before its rename.
        std::fs::write(
            d.join(format!("{WRITING_PREFIX}999999999.4")),
            "ADD x 0 - 1\n",
        )
        .unwrap();
        drop(held);
        record(&d, &ok("DEL", "attache", 0.01)).unwrap();
        let st = State::parse(&std::fs::read_to_string(d.join(FILE)).unwrap());
        assert_eq!(st.skipped, 2);
        let add = ["ADD", "attache", "success", "0"].map(String::from);
        assert_eq!(st.invocations[&add], 2);
        let check = ["CHECK", "attache", "error", "7"].map(String::from);
        assert_eq!(st.invocations[&check], 1);
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [LOCK, FILE]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_sample_left_pending_is_folded_in_by_the_holder_it_lost_to() {
        let d = tempdir("metrics-fold");
        // A process that could not take the lock wrote its sample; the holder, after its own update,
        // finds it and folds it in: no later invocation is needed.
        write_pending(&d, &ok("DEL", "bridge", 0.02)).unwrap();
        assert!(has_pending(&d));
        record(&d, &ok("ADD", "bridge", 0.01)).unwrap();
        assert!(!has_pending(&d));
        let st = State::parse(&std::fs::read_to_string(d.join(FILE)).unwrap());
        let del = ["DEL", "bridge", "success", "0"].map(String::from);
        assert_eq!(st.invocations[&del], 1);
        assert_eq!(st.skipped, 0);
        let line = PendingSample::line(&failed("ADD", 11, "ptp"));
        let back = PendingSample::parse(&line).unwrap();
        assert_eq!(back.sample(), failed("ADD", 11, "ptp"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unusable_folder_is_an_error_not_a_panic() {
        let d = tempdir("metrics-bad");
        let file = d.join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        assert!(record(&file, &ok("ADD", "attache", 0.0)).is_err());
        // The metrics file's place taken by a directory: the rename fails, the temporary goes.
        let dir = d.join("m");
        std::fs::create_dir_all(dir.join(FILE)).unwrap();
        assert!(record(&dir, &ok("ADD", "attache", 0.0)).is_err());
        let temps = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(temps, 0);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
