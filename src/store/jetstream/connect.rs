//! Reaching the cluster: the client's options from the broker's config
//! (seed URLs, credentials, TLS), the connection's health as the broker
//! reports it, and the durability check before anything is trusted.

use std::{future::Future, path::PathBuf, time::Duration};

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use tokio::{sync::watch, time::Instant};

use super::preflight::{check_durability, PreflightError};
use crate::{
    config::{Backend, Config},
    error::{Error, Result},
    store::StoreHealth,
};

/// How long connecting to a seed may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request (a publish's ack, a bucket write) may wait for its
/// answer before its outcome counts as unknown. Stream and bucket creation
/// is a Raft round on nodes that fsync every write: on a loaded machine it
/// has taken over 5 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long start-up waits for nodes that do not answer yet on their
/// monitoring or client ports: started together with the broker (a compose
/// file, a reboot), they may open their ports after it.
const WAIT_FOR_NODES: Duration = Duration::from_secs(120);
/// Between two attempts at a node that does not answer yet.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A failed first contact with the cluster.
struct Failed {
    error: Error,
    /// The nodes did not answer (yet): asking again may succeed. A refusal
    /// (credentials, TLS, durability) is not asked again.
    not_up: bool,
}

/// What the broker needs to reach and use the cluster; built from the
/// config keys of cluster mode. No `Debug`: it holds credentials.
#[derive(Clone)]
pub struct ClusterOptions {
    /// Seed URLs (`nats_url`).
    pub urls: Vec<String>,
    /// User and password (`nats_user`, `nats_password`).
    pub user: Option<(String, String)>,
    /// Token (`nats_token`).
    pub token: Option<String>,
    /// NKey user seed (read from `nats_nkey_seed_file`).
    pub nkey_seed: Option<String>,
    /// A credentials file's text: user JWT and seed (`nats_creds_file`).
    pub creds: Option<String>,
    /// The credential keys that are set, for the refusal's hint.
    pub credential_keys: Vec<&'static str>,
    /// CA certificates for the servers' TLS (`nats_tls_ca_file`).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (`nats_tls_cert`, `nats_tls_key`).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse a connection without TLS (`nats_require_tls`).
    pub require_tls: bool,
    /// Names the stream and buckets (`nats_prefix`).
    pub prefix: String,
    /// Their replicas (`nats_replicas`).
    pub replicas: usize,
    /// Every node's monitoring URL (`nats_monitor_url`).
    pub monitor_urls: Vec<String>,
    /// Start even if the durability check fails (`allow_unsynced_cluster`).
    pub allow_unsynced: bool,
}

impl ClusterOptions {
    /// The options of `config`, if it selects the cluster backend.
    pub fn from_config(config: &Config) -> Option<Self> {
        if config.backend != Backend::JetStream {
            return None;
        }
        Some(ClusterOptions {
            urls: config.nats_url.iter().map(|u| u.to_string()).collect(),
            user: config
                .nats_user
                .clone()
                .zip(config.nats_password.as_ref().map(|p| p.expose().to_owned())),
            token: config.nats_token.as_ref().map(|t| t.expose().to_owned()),
            nkey_seed: config
                .nats_nkey_seed_file
                .as_ref()
                .map(|f| f.secret().expose().to_owned()),
            creds: config
                .nats_creds_file
                .as_ref()
                .map(|f| f.secret().expose().to_owned()),
            credential_keys: config.nats_credential_keys(),
            tls_ca: config.nats_tls_ca_file.clone(),
            tls_client: config
                .nats_tls_cert
                .clone()
                .zip(config.nats_tls_key.clone()),
            require_tls: config.nats_require_tls,
            prefix: config.nats_prefix.clone(),
            replicas: config.nats_replicas,
            monitor_urls: config.nats_monitor_url.clone(),
            allow_unsynced: config.allow_unsynced_cluster,
        })
    }

    /// The durability check, then the connection (see [`Self::connect`]),
    /// each asked again every second while the nodes do not answer, for up
    /// to [`WAIT_FOR_NODES`] in all; a refusal ends it at once.
    pub(super) async fn reach(&self, health: watch::Sender<StoreHealth>) -> Result<Client> {
        let deadline = Instant::now() + WAIT_FOR_NODES;
        let what = "the NATS nodes do not answer yet (still starting?)";
        let not_up = |f: &Failed| f.not_up;
        retry_while(deadline, RETRY_PAUSE, what, not_up, || {
            self.check_durability()
        })
        .await
        .map_err(|f| f.error)?;
        retry_while(deadline, RETRY_PAUSE, what, not_up, || {
            self.connect(health.clone())
        })
        .await
        .map_err(|f| f.error)
    }

    /// Connects, reporting the connection's state on `health` from now on:
    /// a lost connection makes the broker NOT_SERVING until the client is
    /// connected again (it reconnects by itself, to any known node).
    async fn connect(
        &self,
        health: watch::Sender<StoreHealth>,
    ) -> std::result::Result<Client, Failed> {
        let mut options = ConnectOptions::new()
            .name("stevedore")
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .require_tls(self.require_tls)
            .event_callback(move |event| {
                let health = health.clone();
                async move { report(&health, event) }
            });
        if let Some((user, password)) = &self.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.clone());
        }
        if let Some(creds) = &self.creds {
            // Checked when the config was loaded; the message names the
            // key, never the file's text.
            options = options.credentials(creds).map_err(|_| Failed {
                error: Error::FailedPrecondition(
                    "config key `nats_creds_file`: not a NATS credentials file".into(),
                ),
                not_up: false,
            })?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        // The error names the keys, never the URLs (they may hold a
        // password) nor the client's text of them.
        let credentials = match self.credential_keys.as_slice() {
            [] => "none set".to_owned(),
            keys => keys.join(", "),
        };
        options
            .connect(self.urls.clone())
            .await
            .map_err(|e| Failed {
                error: Error::Unavailable(format!(
                    "config key `nats_url`: cannot connect to the NATS cluster ({}): check that \
                     the nodes run and that nats_url, the credentials ({credentials}) and the TLS \
                     settings are right",
                    e.kind()
                )),
                not_up: matches!(
                    e.kind(),
                    ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns
                ),
            })
    }

    /// The durability check (see [`super::preflight`]): refuses to start on
    /// a cluster that acknowledges writes before they are on disk, unless
    /// the operator allowed it, which is then logged loudly at every start.
    async fn check_durability(&self) -> std::result::Result<(), Failed> {
        if self.monitor_urls.is_empty() {
            tracing::warn!(
                "allow_unsynced_cluster is on and nats_monitor_url is empty: the NATS cluster's \
                 durability is NOT checked; unless every node runs `sync_interval: always`, an \
                 acknowledged event can be lost when a majority of nodes lose power together"
            );
            return Ok(());
        }
        match check_durability(&self.monitor_urls).await {
            Ok(found) => {
                let nodes: Vec<_> = found.nodes.iter().map(|n| n.server_name.as_str()).collect();
                tracing::info!(nodes = %nodes.join(", "), "every NATS node syncs every write (sync_interval: always)");
                Ok(())
            }
            Err(e) if self.allow_unsynced => {
                tracing::warn!(
                    error = %e,
                    "allow_unsynced_cluster is on: starting although the NATS cluster's \
                     durability check failed; an acknowledged event can be lost"
                );
                Ok(())
            }
            Err(e) => Err(Failed {
                not_up: not_up_yet(&e),
                error: Error::FailedPrecondition(format!(
                    "refusing to start on this NATS cluster: {e}. (To start anyway, accepting \
                     that acknowledged events can be lost, set allow_unsynced_cluster = true.)"
                )),
            }),
        }
    }
}

/// Whether the durability check failed because the nodes are not up yet
/// (asked again) rather than because of how they are set up (refused at
/// once). A node that has just started answers `/jsz` before its
/// JetStream is up, as disabled: a broker started with its nodes saw that
/// on CI.
fn not_up_yet(e: &PreflightError) -> bool {
    matches!(
        e,
        PreflightError::Unreachable { .. } | PreflightError::NoJetStream { .. }
    )
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// `attempt()`, asked again after `pause` while its error `may_pass` and
/// `deadline` is ahead, each time logging the error with `what`: the one
/// retry rule of start-up (nodes not listening yet, then not answering
/// while they elect their meta leader).
pub(super) async fn retry_while<T, E, F, Fut>(
    deadline: Instant,
    pause: Duration,
    what: &str,
    may_pass: impl Fn(&E) -> bool,
    mut attempt: F,
) -> std::result::Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    loop {
        match attempt().await {
            Err(e) if may_pass(&e) && Instant::now() < deadline => {
                tracing::warn!(error = %e, "{what}; asking again");
                tokio::time::sleep(pause).await;
            }
            outcome => return outcome,
        }
    }
}

/// The connection's state as the store's health.
fn report(health: &watch::Sender<StoreHealth>, event: Event) {
    let problem = match event {
        Event::Disconnected => Some("the connection to the NATS cluster is lost; reconnecting"),
        Event::Closed => Some("the connection to the NATS cluster is closed"),
        Event::Connected => None,
        _ => return,
    };
    health.send_if_modified(|h| {
        let new = problem.map(str::to_owned);
        let changed = h.log != new;
        h.log = new;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_still_starting_are_asked_again_and_nodes_set_up_wrong_are_refused() {
        let url = "http://127.0.0.1:8222".to_owned();
        let starting = [
            PreflightError::Unreachable {
                url: url.clone(),
                reason: "connection refused".into(),
            },
            PreflightError::NoJetStream {
                server: "n1".into(),
                url,
            },
        ];
        assert!(starting.iter().all(not_up_yet));
        let wrong = [
            PreflightError::NoMonitoringUrls,
            PreflightError::Unchecked {
                missing: vec!["n3".into()],
            },
            PreflightError::Unsynced { nodes: Vec::new() },
        ];
        assert!(!wrong.iter().any(not_up_yet));
    }
}
