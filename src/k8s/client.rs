//! The Kubernetes API client: a connection from a kubeconfig (or in-cluster), every call under one
//! deadline per phase of an invocation, and errors a user can act on (who refused what, which server
//! could not be reached). All that attache-ipam needs; the Multus calls (pods, definitions,
//! network-status, Events) are in [`super::api`].

use std::path::Path;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::{Error, Result};

/// A connected API client. Every call it makes ends by its deadline: the whole phase of an invocation
/// that uses it (planning, or reporting) shares one.
#[derive(Clone)]
pub struct KubeApi {
    client: Client,
    timeout: Duration,
    deadline: tokio::time::Instant,
    /// The API server's URL and where the credentials came from, for errors a user can act on.
    server: String,
    source: String,
}

/// What attache calls itself: the User-Agent of its requests and the field manager of its writes
/// (`managedFields` shows it).
pub const AGENT: &str = concat!("attache/", env!("CARGO_PKG_VERSION"));
pub const FIELD_MANAGER: &str = "attache";

/// The I/O error at the root of a client error, if there is one (connection refused, timed out ...).
fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// The innermost message of an error chain (hyper's outer layers say only "client error (Connect)").
fn root_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The largest token file read: a service-account token is about 1 KiB.
const MAX_TOKEN: u64 = 64 << 10;

/// A kubeconfig's (or the service account's) token file, read once for this short-lived process and
/// trimmed as client-go trims it: `kubectl create token ... > file` ends it in a newline, which the
/// client would put into the Authorization header and fail every call with "failed to parse header
/// value". A token that is still no valid header value gets an error naming the file, not a call's.
fn use_token_file(config: &mut Config) -> Result<()> {
    let Some(file) = config.auth_info.token_file.clone() else {
        return Ok(());
    };
    if config.auth_info.token.is_some() {
        return Ok(()); // an inline token takes precedence, as the client would have it
    }
    // Not read as a state file: a projected token is a symlink (`..data/token`).
    let mut bytes = Vec::new();
    std::fs::File::open(&file)
        .and_then(|f| {
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_TOKEN), &mut bytes)
        })
        .map_err(|e| Error::config(format!("reading the token file {file}: {e}")))?;
    let token = String::from_utf8(bytes)
        .map_err(|_| Error::config(format!("the token file {file} is not text")))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::config(format!("the token file {file} is empty")));
    }
    if let Some(c) = token.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(Error::config(format!(
            "the token in {file} cannot be sent: it contains {c:?}, which no bearer token has (is it the token, whole and alone?)"
        )));
    }
    config.auth_info.token = Some(token.to_string().into());
    config.auth_info.token_file = None;
    Ok(())
}

impl KubeApi {
    /// A client from a kubeconfig file, or (without one) the in-cluster service account / `$KUBECONFIG`,
    /// whose calls share one deadline `timeout` from now.
    pub async fn connect(kubeconfig: Option<&Path>, timeout: Duration) -> Result<KubeApi> {
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::time::timeout_at(deadline, Self::connect_inner(kubeconfig, timeout))
            .await
            .map_err(|_| {
                Error::TryAgain(format!(
                    "Kubernetes API: loading the client configuration took more than {timeout:?}"
                ))
            })?
            .map(|(client, server)| KubeApi {
                client,
                timeout,
                deadline,
                server,
                source: match kubeconfig {
                    Some(p) => format!("kubeconfig {}", p.display()),
                    None => "the in-cluster service account".into(),
                },
            })
    }

    /// One sentence a user can act on: who refused what, or which server could not be reached.
    pub fn err(&self, what: &str, e: kube::Error) -> Error {
        let (server, source) = (&self.server, &self.source);
        match &e {
            kube::Error::Api(s) if s.code == 401 => Error::TryAgain(format!(
                "Kubernetes API {server} refused the credentials of {source} (401 Unauthorized) to {what}: the token has expired or was revoked"
            )),
            kube::Error::Api(s) if s.code == 403 => Error::TryAgain(format!(
                "Kubernetes API {server} forbids the credentials of {source} to {what} (403 Forbidden): {}",
                s.message
            )),
            kube::Error::Api(s) => Error::TryAgain(format!(
                "Kubernetes API {server}: {what}: {} ({} {})",
                s.message, s.code, s.reason
            )),
            _ => match io_cause(&e) {
                Some(io) => Error::TryAgain(format!(
                    "Kubernetes API {server} (from {source}) is unreachable, so attache could not {what}: {io}"
                )),
                None => Error::TryAgain(format!(
                    "Kubernetes API {server} (from {source}): {what}: {}",
                    root_message(&e)
                )),
            },
        }
    }

    /// The same client with a fresh deadline (for the next phase of the invocation).
    pub fn renewed(&self) -> KubeApi {
        KubeApi {
            deadline: tokio::time::Instant::now() + self.timeout,
            ..self.clone()
        }
    }

    /// A copy whose calls share a deadline `d` from now (at most the client's own timeout).
    pub fn renewed_for(&self, d: Duration) -> KubeApi {
        KubeApi {
            deadline: tokio::time::Instant::now() + d.min(self.timeout),
            ..self.clone()
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Run one call under the phase's deadline; an answer with a status in `expected` (404, 409 ...)
    /// is the caller's to handle: `Ok(Err(code))`.
    pub async fn call<T>(
        &self,
        what: &str,
        expected: &[u16],
        fut: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
    ) -> Result<std::result::Result<T, u16>> {
        match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(Ok(v)) => Ok(Ok(v)),
            Ok(Err(kube::Error::Api(s))) if expected.contains(&s.code) => Ok(Err(s.code)),
            Ok(Err(e)) => Err(self.err(what, e)),
            Err(_) => Err(self.late(what)),
        }
    }

    /// Every item of a list, its pages (`lp`'s limit) read to the end; `list` asks for one page. Any
    /// failure — an expired continue token included — is an error: never a shorter list.
    pub async fn all_pages<T, Fut>(
        &self,
        what: &str,
        mut lp: kube::api::ListParams,
        list: impl Fn(kube::api::ListParams) -> Fut,
    ) -> Result<(Vec<T>, String)>
    where
        T: Clone,
        Fut: std::future::Future<
                Output = std::result::Result<kube::core::ObjectList<T>, kube::Error>,
            >,
    {
        let mut out = Vec::new();
        loop {
            let page = self.bounded(what, list(lp.clone())).await?;
            let rv = page.metadata.resource_version.clone().unwrap_or_default();
            out.extend(page.items);
            match page.metadata.continue_.as_deref() {
                Some(t) if !t.is_empty() => lp = lp.continue_token(t),
                _ => return Ok((out, rv)),
            }
        }
    }

    /// Run one call under the phase's deadline.
    pub async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(r) => r.map_err(|e| self.err(what, e)),
            Err(_) => Err(self.late(what)),
        }
    }

    async fn connect_inner(
        kubeconfig: Option<&Path>,
        timeout: Duration,
    ) -> Result<(Client, String)> {
        let mut config = match kubeconfig {
            Some(p) => {
                let kc = Kubeconfig::read_from(p)
                    .map_err(|e| Error::config(format!("kubeconfig {}: {e}", p.display())))?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| Error::config(format!("kubeconfig {}: {e}", p.display())))?
            }
            None => Config::infer().await.map_err(|e| {
                Error::config(format!(
                    "no kubeconfig and no in-cluster configuration: {e}"
                ))
            })?,
        };
        use_token_file(&mut config)?;
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(AGENT),
        ));
        let server = config.cluster_url.to_string();
        Client::try_from(config)
            .map(|c| (c, server.trim_end_matches('/').to_string()))
            .map_err(|e| Error::config(format!("Kubernetes client: {e}")))
    }

    /// Run `fut` under the phase's deadline, leaving every answer to the caller; `None`: the deadline
    /// passed (see [`KubeApi::late`]).
    pub async fn within<T>(&self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout_at(self.deadline, fut).await.ok()
    }

    /// The error of a call that got no answer by the deadline.
    pub fn late(&self, what: &str) -> Error {
        Error::TryAgain(format!(
            "Kubernetes API {}: {what}: no answer within the API deadline ({:?}, apiTimeout)",
            self.server, self.timeout
        ))
    }
}
