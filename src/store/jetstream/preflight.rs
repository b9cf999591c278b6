//! The durability check a broker makes before it trusts the cluster.
//!
//! JetStream answers a publish once the stream's Raft quorum has the entry,
//! but by default a node fsyncs its stream files only every two minutes:
//! an acknowledged event can then vanish when a majority of nodes lose power
//! together. Only `sync_interval: always` makes every write reach the disk
//! before the ack. The setting is not in the JetStream API
//! (`$JS.API.INFO`), so it is read from each node's monitoring endpoint
//! (`/jsz`: `config.sync_always`), whose meta group's member list
//! (`meta_cluster`) also shows whether any node was left unchecked; `/varz`
//! gives the node's name.
//!
//! Not `/varz`'s own `jetstream.config`: nats-server builds that part once,
//! at the first `/varz` request, and never again, so a node asked before
//! its JetStream was up (monitoring starts first; a restart recovering its
//! streams takes a while) reports no JetStream until it is restarted. A
//! broker started with its nodes hit that on CI. `/jsz` is built afresh
//! for every request.

use std::{collections::BTreeSet, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde::Deserialize;

/// How long one monitoring request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest monitoring answer read (`/varz` and `/jsz` are a few KiB).
const MAX_BODY: usize = 1 << 20;

/// What the check found on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDurability {
    /// The node's `server_name`.
    pub server_name: String,
    /// Where it was asked.
    pub monitoring_url: String,
    /// It syncs every write before acknowledging it.
    pub sync_always: bool,
    /// Its periodic sync interval (what applies when `sync_always` is off).
    pub sync_interval: Duration,
}

/// A cluster every node of which syncs every write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// Each node checked, in the order of the URLs given.
    pub nodes: Vec<NodeDurability>,
}

/// Why the cluster's durability could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Nothing to check.
    #[error("no nats-server monitoring URL given: the durability check needs the `http:` monitoring address of every cluster node")]
    NoMonitoringUrls,
    /// A node's monitoring endpoint did not answer usefully.
    #[error("nats-server monitoring endpoint {url}: {reason} (the durability check reads /varz and /jsz of every cluster node; enable monitoring with `http: <host>:<port>` in its config)")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A node runs without JetStream.
    #[error("nats-server {server} ({url}) does not run JetStream: add a `jetstream {{ sync_interval: always }}` block to its config")]
    NoJetStream {
        /// Its `server_name`.
        server: String,
        /// Its monitoring endpoint.
        url: String,
    },
    /// Members of the JetStream cluster were not among the nodes checked.
    #[error("JetStream cluster nodes {} were not checked: give the monitoring URL of every node", .missing.join(", "))]
    Unchecked {
        /// Their server names.
        missing: Vec<String>,
    },
    /// Nodes acknowledge writes before they are on disk.
    #[error("nats-server nodes {} acknowledge writes before they are on disk (they fsync only periodically), so an acknowledged event could be lost: set `sync_interval: always` in the `jetstream {{ }}` block of each node's config and restart the nodes one at a time", describe(.nodes))]
    Unsynced {
        /// The nodes that do not sync every write.
        nodes: Vec<NodeDurability>,
    },
}

/// `n2 (every 2m), n3 (every 2m)`.
fn describe(nodes: &[NodeDurability]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "{} (every {})",
                n.server_name,
                humantime::format_duration(n.sync_interval)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `/varz`, the part read.
#[derive(Deserialize)]
struct Varz {
    server_name: String,
}

#[derive(Deserialize)]
struct JetStreamConfig {
    /// Nanoseconds.
    #[serde(default)]
    sync_interval: u64,
    /// Absent unless `sync_interval: always`.
    #[serde(default)]
    sync_always: bool,
}

/// `/jsz`, the parts read.
#[derive(Deserialize)]
struct Jsz {
    /// JetStream is not (yet) enabled on the node.
    #[serde(default)]
    disabled: bool,
    config: Option<JetStreamConfig>,
    meta_cluster: Option<MetaCluster>,
}

#[derive(Deserialize)]
struct MetaCluster {
    #[serde(default)]
    leader: String,
    #[serde(default)]
    replicas: Vec<Peer>,
}

#[derive(Deserialize)]
struct Peer {
    name: String,
}

/// Checks that every node of the cluster syncs every write, asking the
/// monitoring endpoints `monitoring_urls` (`http://host:port`, one per
/// node). Every member of the JetStream meta group must be among them.
pub async fn check_durability(monitoring_urls: &[String]) -> Result<Durability, PreflightError> {
    if monitoring_urls.is_empty() {
        return Err(PreflightError::NoMonitoringUrls);
    }
    let http = Monitoring::new();
    let mut nodes = Vec::with_capacity(monitoring_urls.len());
    let mut members = BTreeSet::new();
    for url in monitoring_urls {
        let url = url.trim_end_matches('/');
        let varz: Varz = http.get(url, "/varz").await?;
        let jsz: Jsz = http.get(url, "/jsz").await?;
        let (false, Some(config)) = (jsz.disabled, jsz.config) else {
            return Err(PreflightError::NoJetStream {
                server: varz.server_name,
                url: url.to_owned(),
            });
        };
        if let Some(meta) = jsz.meta_cluster {
            members.extend(meta.replicas.into_iter().map(|p| p.name));
            if !meta.leader.is_empty() {
                members.insert(meta.leader);
            }
        }
        nodes.push(NodeDurability {
            server_name: varz.server_name,
            monitoring_url: url.to_owned(),
            sync_always: config.sync_always,
            sync_interval: Duration::from_nanos(config.sync_interval),
        });
    }
    for n in &nodes {
        members.remove(&n.server_name);
    }
    if !members.is_empty() {
        return Err(PreflightError::Unchecked {
            missing: members.into_iter().collect(),
        });
    }
    let unsynced: Vec<_> = nodes.iter().filter(|n| !n.sync_always).cloned().collect();
    if !unsynced.is_empty() {
        return Err(PreflightError::Unsynced { nodes: unsynced });
    }
    Ok(Durability { nodes })
}

/// A plain-HTTP client for the monitoring endpoints.
struct Monitoring {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Monitoring {
    fn new() -> Self {
        Monitoring {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// GETs `base` + `path` and parses its JSON.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
    ) -> Result<T, PreflightError> {
        let fail = |reason: String| PreflightError::Unreachable {
            url: base.to_owned(),
            reason,
        };
        if !base.starts_with("http://") {
            return Err(fail(
                "only http:// monitoring URLs are supported".to_owned(),
            ));
        }
        let uri: http::Uri = format!("{base}{path}")
            .parse()
            .map_err(|e| fail(format!("not a URL: {e}")))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.get(uri))
            .await
            .map_err(|_| fail(format!("no answer to {path} within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| fail(format!("{path}: {e}")))?;
        if !response.status().is_success() {
            return Err(fail(format!("{path} answered {}", response.status())));
        }
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(response.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| fail(format!("{path}: body not read within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| fail(format!("{path}: {e}")))?
        .to_bytes();
        serde_json::from_slice(&body)
            .map_err(|e| fail(format!("{path}: not the expected JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_nodes_and_the_fix() {
        let node = |name: &str| NodeDurability {
            server_name: name.to_owned(),
            monitoring_url: format!("http://127.0.0.1/{name}"),
            sync_always: false,
            sync_interval: Duration::from_secs(120),
        };
        let e = PreflightError::Unsynced {
            nodes: vec![node("n1"), node("n3")],
        };
        let text = e.to_string();
        assert!(text.contains("n1 (every 2m), n3 (every 2m)"), "{text}");
        assert!(text.contains("sync_interval: always"), "{text}");
    }

    #[test]
    fn jsz_without_sync_always_reads_as_periodic() {
        let j: Jsz =
            serde_json::from_str(r#"{"config":{"sync_interval":120000000000},"streams":0}"#)
                .unwrap();
        let c = j.config.unwrap();
        assert!(!j.disabled);
        assert!(!c.sync_always);
        assert_eq!(c.sync_interval, 120_000_000_000);
    }

    /// A node's monitoring port answering `/varz` and `/jsz` with `varz`
    /// and `jsz`, on loopback.
    async fn monitoring(varz: &'static str, jsz: &'static str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for _ in 0..16 {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut request = vec![0; 1024];
                let n = conn.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]);
                let body = if request.starts_with("GET /jsz") {
                    jsz
                } else {
                    varz
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        url
    }

    /// What a node asked for `/varz` before its JetStream was up keeps
    /// answering (nats-server fills `/varz`'s `jetstream.config` in only at
    /// the first request): the check reads `/jsz` and passes. On the code
    /// that read `/varz`'s config, a broker started with its nodes was
    /// refused for good.
    #[tokio::test]
    async fn a_node_whose_varz_lost_its_jetstream_config_is_read_from_jsz() {
        let url = monitoring(
            r#"{"server_name":"n1","jetstream":{"stats":{}}}"#,
            r#"{"config":{"sync_interval":120000000000,"sync_always":true},"meta_cluster":{"leader":"n1","replicas":[]}}"#,
        )
        .await;
        let found = check_durability(&[url]).await.unwrap();
        assert_eq!(found.nodes.len(), 1);
        assert_eq!(found.nodes[0].server_name, "n1");
        assert!(found.nodes[0].sync_always);
    }

    #[tokio::test]
    async fn a_node_whose_jetstream_is_not_up_is_named() {
        let url = monitoring(
            r#"{"server_name":"n2"}"#,
            r#"{"server_id":"X","disabled":true}"#,
        )
        .await;
        let e = check_durability(&[url]).await.unwrap_err();
        assert!(
            matches!(&e, PreflightError::NoJetStream { server, .. } if server == "n2"),
            "{e}"
        );
    }
}
