//! attache: a CNI meta-plugin that gives Kubernetes pods several network interfaces.
//!
//! Data flow of one invocation:
//!
//! 1. [`cni::skel`] reads `CNI_*` and the configuration, validates them for the command (codes 4, 6, 7, 1)
//!    and hands a [`cni::skel::CmdArgs`] and a [`cni::conf::NetConf`] to the [`engine`].
//! 2. The [`engine`] picks what runs: the meta-plugin (`"type": "attache"`, [`engine::meta`]) or a native
//!    driver in drop-in mode ([`attach`]).
//! 3. The meta-plugin plans every attachment of the pod first, writes a record ([`engine::record`]) before
//!    the first side effect, then attaches: the cluster network by exec ([`delegate`]), native types
//!    in-process ([`attach`], over [`netlink`] inside the pod's [`netns`]). A failure undoes everything in
//!    reverse order.
//! 4. DEL tears down from the record, best effort, and forgets it only when all is gone. CHECK verifies
//!    against the record; GC removes what the runtime no longer lists.
//! 5. When the answer is written, the invocation is counted in `<metricsDir>/attache.prom` ([`metrics`]),
//!    if the configuration names a `metricsDir`.
//!
//! Dependencies point one way, with no cycle: each module uses only those on the lines of [`LAYERS`]
//! below its own (modules on one line use none of each other), and a unit test (`layers`) reads `src/`
//! and fails on any edge that goes up. (`cni` never names `engine`: `main` hands the engine to
//! `cni::skel` as a [`cni::skel::Plugin`].) The operator's commands (`cli`) sit on top of everything; all
//! rendering (tables) is theirs.

/// The modules from top to bottom, the one statement of the crate's layering: a module may use those on
/// the lines below its own, never one on its own line or above. `src/lib.rs`'s test `layers` holds the
/// code to it.
pub const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["engine"],
    &["attach"],
    &["ipam"],
    &["k8s", "delegate", "cri"],
    &["cni"],
    &["netlink"],
    &["netns"],
    &["metrics"],
    &["files", "fail", "spawn"],
    &["error"],
];

pub mod attach;
pub mod cli;
pub mod cni;
pub mod cri;
pub mod delegate;
pub mod engine;
pub mod error;
pub mod fail;
pub mod files;
pub mod ipam;
pub mod k8s;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod spawn;
#[cfg(test)]
mod testutil;

#[cfg(test)]
mod layers {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`, recursively.
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// A file's module path under the crate root (`src/engine/meta.rs` -> `engine::meta`,
    /// `src/engine/mod.rs` -> `engine`).
    fn module_of(rel: &Path) -> Vec<String> {
        let mut parts: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if parts.last().is_some_and(|l| l == "mod") {
            parts.pop();
        }
        parts
    }

    /// The code of a file without its comments and its unit tests (`#[cfg(test)] mod tests`).
    fn code(text: &str) -> String {
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => text,
        };
        text.lines()
            .map(|l| match l.find("//") {
                Some(i) => &l[..i],
                None => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The top-level modules a file's paths name: `crate::x`, `crate::{x, y::z}`, and `super::` chains
    /// that climb out of its own top-level module.
    fn targets(module: &[String], code: &str) -> Vec<String> {
        let mut out = Vec::new();
        let text = code;
        let mut i = 0;
        loop {
            // The nearer of the two kinds of path.
            let at = match (text[i..].find("crate::"), text[i..].find("super::")) {
                (Some(a), Some(b)) => i + a.min(b),
                (Some(a), None) | (None, Some(a)) => i + a,
                (None, None) => break,
            };
            let (start, mut depth_up, root) = if text[at..].starts_with("crate::") {
                (at + "crate::".len(), 0, true)
            } else {
                (at + "super::".len(), 1, false)
            };
            let mut rest = &text[start..];
            while let Some(r) = rest.strip_prefix("super::") {
                depth_up += 1;
                rest = r;
            }
            i = text.len() - rest.len();
            let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|p| p.trim().split("::").next().unwrap_or("").to_string())
                    .collect()
            } else {
                vec![
                    rest.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect(),
                ]
            };
            let base: Vec<String> = if root {
                vec![]
            } else if depth_up <= module.len() {
                module[..module.len() - depth_up].to_vec()
            } else {
                continue;
            };
            for n in names.into_iter().filter(|n| !n.is_empty() && n != "self") {
                let top = base.first().cloned().unwrap_or(n);
                out.push(top);
            }
        }
        out
    }

    #[test]
    fn no_module_uses_one_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let rank = |m: &str| super::LAYERS.iter().position(|line| line.contains(&m));
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut wrong = Vec::new();
        let mut seen_tops = std::collections::BTreeSet::new();
        for f in files {
            let rel = f.strip_prefix(&src).unwrap();
            let module = module_of(rel);
            let top = module[0].clone();
            // The binary's entry, the crate root and the unit tests' helpers are no layer.
            if ["main", "lib", "testutil"].contains(&top.as_str())
                || rel.file_name().is_some_and(|n| n == "tests.rs")
            {
                continue;
            }
            seen_tops.insert(top.clone());
            let Some(mine) = rank(&top) else {
                wrong.push(format!("{}: module {top} is not in LAYERS", rel.display()));
                continue;
            };
            let text = std::fs::read_to_string(&f).unwrap();
            for t in targets(&module, &code(&text)) {
                if t == top {
                    continue;
                }
                match rank(&t) {
                    Some(r) if r > mine => {}
                    Some(_) => wrong.push(format!(
                        "{}: {top} uses {t}, which is not below it in LAYERS",
                        rel.display()
                    )),
                    None => {} // an item of the crate root, a macro, a std path
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // Every layer names a module that exists: the table cannot drift from the tree.
        for m in super::LAYERS.iter().flat_map(|l| l.iter()) {
            assert!(
                seen_tops.contains(*m),
                "LAYERS names {m}, which src/ does not have"
            );
        }
    }

    #[test]
    fn the_checker_sees_upward_and_grouped_and_super_paths() {
        let m = |p: &str| p.split("::").map(str::to_string).collect::<Vec<_>>();
        let code = "use crate::{cli::table, files};\nlet x = super::super::engine::META;\nuse super::sibling;";
        assert_eq!(
            targets(&m("ipam::cluster::local"), code),
            ["cli", "files", "ipam", "ipam"]
        );
        assert_eq!(targets(&m("engine"), "super::attach::X"), ["attach"]);
    }
}
