//! The crate's one error type. Every failure carries what a person needs to act on it, the kernel errno
//! where there is one, and maps to exactly one CNI error code — decided here and nowhere else.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// CNI error codes (SPEC §5 "Error", plus the Go library's 8 and 999).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const INVALID_NETNS: u32 = 8;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("incompatible CNI version: {0}")]
    IncompatibleVersion(String),
    #[error("invalid environment: {0}")]
    InvalidEnv(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to decode {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid network config: {0}")]
    Config(String),
    #[error("invalid netns {path}: {reason}")]
    NetNs { path: PathBuf, reason: String },
    #[error("{0}")]
    NotAvailable(String),
    /// attache lacks a capability the command needs (reported as code 5, before any side effect).
    #[error("{0}")]
    Privilege(String),
    /// Transient: the caller may retry (an API server that did not answer).
    #[error("{0}")]
    TryAgain(String),
    /// The node is not ready yet: the cluster network's configuration or a plugin binary is not installed
    /// (after a reboot, before its DaemonSet ran). ADD gets code 11, so the runtime retries; STATUS
    /// reports it as 50.
    #[error("not ready: {0}")]
    NotReady(String),
    /// An error reported by a delegated plugin: its own code and message are passed through. `plugin`
    /// is its type and nothing else (the metrics label the failure with it); [`Error::context`] goes
    /// into `context`, printed before it.
    #[error("{context}{plugin}: {msg}")]
    Delegate {
        plugin: String,
        code: u32,
        msg: String,
        details: String,
        /// `"ctx: "` prefixes added by [`Error::context`], outermost first; empty when there are none.
        context: String,
    },
    /// A kernel error, errno kept so callers can match EEXIST / ENODEV / ENOENT.
    #[error("{op}: {errno}")]
    Kernel {
        op: String,
        errno: nix::errno::Errno,
    },
    #[error("{0}")]
    Ipam(String),
    /// Something on the node or in the pod is in the way — an interface of that name, a link of
    /// another kind, an address, an attachment in another netns: the operator's to resolve. Code 999,
    /// as the reference plugins answer it.
    #[error("{0}")]
    Conflict(String),
    /// CHECK found the pod different from what was attached (an address, a route, a MAC, a master).
    #[error("{0}")]
    Mismatch(String),
    /// A bug in attache, or something that cannot happen (a worker thread gone, a value that does not
    /// serialise).
    #[error("{0}")]
    Internal(String),
    /// Several errors from a best-effort teardown; the first decides the code.
    #[error("{}", ErrorList(.0))]
    Many(Vec<Error>),
}

struct ErrorList<'a>(&'a [Error]);

impl fmt::Display for ErrorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn kernel(op: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Error::Kernel {
            op: op.into(),
            errno,
        }
    }

    /// The CNI error code this error is reported with.
    pub fn cni_code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion(_) => code::INCOMPATIBLE_VERSION,
            Error::InvalidEnv(_) => code::INVALID_ENV,
            Error::Io { .. } | Error::Privilege(_) => code::IO,
            Error::Decode { .. } => code::DECODE,
            Error::Config(_) => code::INVALID_CONFIG,
            Error::NetNs { .. } => code::INVALID_NETNS,
            Error::NotAvailable(_) => code::NOT_AVAILABLE,
            Error::TryAgain(_) | Error::NotReady(_) => code::TRY_AGAIN,
            Error::Delegate { code, .. } => *code,
            Error::Kernel { .. }
            | Error::Ipam(_)
            | Error::Conflict(_)
            | Error::Mismatch(_)
            | Error::Internal(_) => code::INTERNAL,
            Error::Many(list) => list.first().map_or(code::INTERNAL, Error::cni_code),
        }
    }

    /// The `details` field of the CNI error.
    pub fn details(&self) -> String {
        match self {
            Error::Delegate { details, .. } => details.clone(),
            Error::Io { source, .. } => source.to_string(),
            Error::Decode { source, .. } => source.to_string(),
            Error::Kernel { errno, .. } => errno.desc().to_string(),
            _ => String::new(),
        }
    }

    /// The errno of a kernel error, if this is one.
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error().map(nix::errno::Errno::from_raw),
            _ => None,
        }
    }

    /// The type of the delegated plugin whose error this is, if it is one (for a list, the first error's,
    /// the one that decides the code).
    pub fn failing_plugin(&self) -> Option<&str> {
        match self {
            Error::Delegate { plugin, .. } => Some(plugin),
            Error::Many(list) => list.first().and_then(Error::failing_plugin),
            _ => None,
        }
    }

    /// Turn a list collected during a best-effort teardown into one result.
    pub fn from_list(mut list: Vec<Error>) -> Result<()> {
        match list.len() {
            0 => Ok(()),
            1 => Err(list.remove(0)),
            _ => Err(Error::Many(list)),
        }
    }

    /// Prefix the message with context while keeping the code.
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        match self {
            Error::Config(m) => Error::Config(format!("{ctx}: {m}")),
            Error::Internal(m) => Error::Internal(format!("{ctx}: {m}")),
            Error::Conflict(m) => Error::Conflict(format!("{ctx}: {m}")),
            Error::Mismatch(m) => Error::Mismatch(format!("{ctx}: {m}")),
            Error::Ipam(m) => Error::Ipam(format!("{ctx}: {m}")),
            Error::NotReady(m) => Error::NotReady(format!("{ctx}: {m}")),
            Error::TryAgain(m) => Error::TryAgain(format!("{ctx}: {m}")),
            Error::Kernel { op, errno } => Error::Kernel {
                op: format!("{ctx}: {op}"),
                errno,
            },
            Error::Io { context, source } => Error::Io {
                context: format!("{ctx}: {context}"),
                source,
            },
            Error::Delegate {
                plugin,
                code,
                msg,
                details,
                context,
            } => Error::Delegate {
                plugin,
                code,
                msg,
                details,
                context: format!("{ctx}: {context}"),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_decided_here() {
        assert_eq!(Error::config("x").cni_code(), 7);
        assert_eq!(Error::InvalidEnv("x".into()).cni_code(), 4);
        // Conflicts and CHECK mismatches are told apart from bugs in the code, not on the wire: the
        // reference plugins answer them with 999 too.
        for e in [
            Error::Conflict("x".into()),
            Error::Mismatch("x".into()),
            Error::Internal("x".into()),
        ] {
            assert_eq!(e.cni_code(), 999);
        }
        assert_eq!(Error::NotReady("x".into()).cni_code(), 11);
        assert_eq!(
            Error::Delegate {
                plugin: "bridge".into(),
                code: 11,
                msg: "m".into(),
                details: String::new(),
                context: String::new(),
            }
            .cni_code(),
            11
        );
        let many = Error::Many(vec![Error::config("a"), Error::Internal("b".into())]);
        assert_eq!(many.cni_code(), 7);
        assert_eq!(many.to_string(), "invalid network config: a; b");
    }

    #[test]
    fn errno_is_kept() {
        let e = Error::kernel("create link", nix::errno::Errno::EEXIST);
        assert_eq!(e.errno(), Some(nix::errno::Errno::EEXIST));
        assert_eq!(e.context("bridge").errno(), Some(nix::errno::Errno::EEXIST));
    }

    #[test]
    fn a_delegate_keeps_its_type_under_context() {
        let e = Error::Delegate {
            plugin: "ptp".into(),
            code: 11,
            msg: "no addresses left".into(),
            details: String::new(),
            context: String::new(),
        }
        .context("attaching network \"cluster\"")
        .context("ADD");
        assert_eq!(
            e.to_string(),
            "ADD: attaching network \"cluster\": ptp: no addresses left"
        );
        assert_eq!(e.failing_plugin(), Some("ptp"));
        assert_eq!(e.cni_code(), 11);
        let many = Error::Many(vec![e, Error::config("x")]);
        assert_eq!(many.failing_plugin(), Some("ptp"));
        assert_eq!(Error::config("x").failing_plugin(), None);
    }
}
