//! Cluster mode's keys (#15): which backend holds the events, how to reach
//! the NATS JetStream cluster (seed URLs, credentials, TLS), the names and
//! replicas of what the broker creates there, and the durability check.
//!
//! NATS URLs may carry credentials (`nats://user:password@host:4222`), and
//! `nats_password`, `nats_token` and the contents of `nats_nkey_seed_file`
//! and `nats_creds_file` are secrets: none of them is repeated in an error or in `Debug`.

use std::{fmt, path::PathBuf};

use anyhow::bail;

use super::Config;

/// Where the broker keeps its events (the `backend` key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// The segment log and sled state in `data_dir` (the default).
    #[default]
    Embedded,
    /// A NATS JetStream cluster shared by several brokers.
    JetStream,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "jetstream" => Ok(Self::JetStream),
            _ => Err("expected `embedded` or `jetstream`".into()),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Embedded => "embedded",
            Backend::JetStream => "jetstream",
        })
    }
}

/// A secret value (`nats_password`, `nats_token`, an NKey seed): `Debug`
/// shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that hands it to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A file holding a secret (`nats_nkey_seed_file`, `nats_creds_file`):
/// its path and its secret, read and checked when the config is loaded (the
/// client, given a bad seed, would log it and connect without one). `Debug`
/// shows the path only; errors name the path, never the file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// Where the secret was read from.
    pub path: PathBuf,
    secret: Secret,
}

impl SecretFile {
    /// `nats_nkey_seed_file`: an NKey user seed, the file's one line
    /// (`SU...`, as `nk -gen user` writes it), surrounding whitespace
    /// ignored.
    pub fn nkey_seed(path: PathBuf) -> Result<Self, String> {
        let text = read(&path, "NKey seed")?;
        let seed = text.trim();
        let user = nkeys::KeyPair::from_seed(seed)
            .is_ok_and(|k| k.key_pair_type() == nkeys::KeyPairType::User);
        if !user {
            return Err(format!(
                "{path:?} does not hold an NKey user seed (one line starting with `SU`, as \
                 `nk -gen user` or `nsc` write it)"
            ));
        }
        Ok(Self {
            secret: Secret::from(seed),
            path,
        })
    }

    /// `nats_creds_file`: a NATS credentials file (a user JWT and its NKey
    /// seed, each between `-----BEGIN ...-----` and `------END ...------`
    /// lines, as `nsc generate creds` writes it), parsed as the client
    /// parses it.
    pub fn creds(path: PathBuf) -> Result<Self, String> {
        let text = read(&path, "credentials")?;
        if async_nats::ConnectOptions::new()
            .credentials(&text)
            .is_err()
        {
            return Err(format!(
                "{path:?} is not a NATS credentials file (a user JWT and its NKey seed between \
                 -----BEGIN/END----- lines, as `nsc generate creds` writes it)"
            ));
        }
        Ok(Self {
            secret: Secret::from(text.as_str()),
            path,
        })
    }

    /// The secret, for the one place that hands it to the client.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

/// The text of the `what` file at `path`.
fn read(path: &PathBuf, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read the {what} file {path:?}: {e}"))
}

/// A NATS seed URL as configured; its `Debug` hides any `user:password@`.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUrl(String);

impl std::ops::Deref for NatsUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::proxy::fmt_redacted(&self.0, f)
    }
}

/// `nats_url`: comma-separated `nats://host:port`, `tls://host:port` or
/// `host:port`. Errors name the entry by position, never its text.
pub fn parse_nats_urls(value: &str) -> Result<Vec<NatsUrl>, String> {
    let mut out = Vec::new();
    for (i, entry) in value.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let bad = || {
            format!(
                "entry {} is not a NATS URL (expected nats://host:port, tls://host:port or \
                 host:port)",
                i + 1
            )
        };
        let scheme = entry.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, None | Some("nats" | "tls")) {
            return Err(bad());
        }
        entry.parse::<async_nats::ServerAddr>().map_err(|_| bad())?;
        out.push(NatsUrl(entry.to_owned()));
    }
    Ok(out)
}

/// `nats_monitor_url`: comma-separated `http://host:port` monitoring
/// endpoints, one per cluster node (the durability check reads them).
pub fn parse_monitor_urls(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, entry) in value.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let entry = entry.trim_end_matches('/');
        let ok = entry
            .strip_prefix("http://")
            .and_then(|rest| rest.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| a.port_u16().is_some() && !a.as_str().contains('@'));
        if !ok {
            return Err(format!(
                "entry {} is not a monitoring URL (expected http://host:port, the `http:` \
                 address of a nats-server node)",
                i + 1
            ));
        }
        out.push(entry.to_owned());
    }
    Ok(out)
}

/// `advertise_url`: `http://host:port` or `https://host:port` (a trailing
/// `/` dropped), no credentials, no path.
pub fn parse_advertise_url(value: &str) -> Result<String, String> {
    let url = value.trim().trim_end_matches('/');
    let ok = ["http://", "https://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .and_then(|rest| rest.parse::<http::uri::Authority>().ok())
        .is_some_and(|a| a.port_u16().is_some() && !a.as_str().contains('@'));
    if !ok {
        return Err(
            "expected http://host:port or https://host:port (where other brokers reach this \
             one's gRPC listener)"
                .to_owned(),
        );
    }
    Ok(url.to_owned())
}

/// `nats_prefix`: what the broker's stream and buckets are named after
/// (`<PREFIX>_EVENTS`, subjects `<prefix>.events.<type>`), so several
/// installations can share one cluster.
pub fn check_prefix(value: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "1 to 32 lowercase letters, digits, '-' or '_', starting with a letter (it names \
             JetStream streams and subjects) (got {value:?})"
        ))
    }
}

impl Config {
    /// The NATS credentials that are set, each named by its key(s).
    pub fn nats_credential_keys(&self) -> Vec<&'static str> {
        [
            (self.nats_user.is_some(), "nats_user/nats_password"),
            (self.nats_token.is_some(), "nats_token"),
            (self.nats_nkey_seed_file.is_some(), "nats_nkey_seed_file"),
            (self.nats_creds_file.is_some(), "nats_creds_file"),
        ]
        .into_iter()
        .filter_map(|(set, key)| set.then_some(key))
        .collect()
    }

    /// Cluster mode's combinations: what it needs when `backend =
    /// "jetstream"`, and credentials that exclude each other.
    pub(super) fn validate_cluster(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.advertise_url {
            match (url.starts_with("https://"), self.tls_cert.is_some()) {
                (false, true) => bail!(
                    "config key `advertise_url`: the gRPC listener serves TLS (tls_cert is \
                     set): other brokers reach it at an https:// URL"
                ),
                (true, false) => bail!(
                    "config key `advertise_url`: the gRPC listener serves plaintext (tls_cert \
                     is not set): other brokers reach it at an http:// URL"
                ),
                _ => {}
            }
        }
        if !(1..=5).contains(&self.nats_replicas) {
            bail!("config key `nats_replicas`: must be between 1 and 5 (JetStream's limit)");
        }
        match (&self.nats_user, &self.nats_password) {
            (Some(_), None) => bail!("config key `nats_password`: required when nats_user is set"),
            (None, Some(_)) => bail!("config key `nats_user`: required when nats_password is set"),
            _ => {}
        }
        let credentials = self.nats_credential_keys();
        if credentials.len() > 1 {
            let set: Vec<String> = credentials.iter().map(|k| format!("`{k}`")).collect();
            bail!(
                "config keys {}: set one kind of NATS credentials only (nats_user/nats_password, \
                 nats_token, nats_nkey_seed_file or nats_creds_file)",
                set.join(" and ")
            );
        }
        match (&self.nats_tls_cert, &self.nats_tls_key) {
            (Some(_), None) => {
                bail!("config key `nats_tls_key`: required when nats_tls_cert is set")
            }
            (None, Some(_)) => {
                bail!("config key `nats_tls_cert`: required when nats_tls_key is set")
            }
            _ => {}
        }
        if self.backend != Backend::JetStream {
            return Ok(());
        }
        if self.nats_url.is_empty() {
            bail!(
                "config key `nats_url`: required with backend = \"jetstream\" (the NATS \
                 cluster's client URLs, comma-separated, e.g. nats://10.0.0.1:4222)"
            );
        }
        if self.advertise_url.is_none() && self.listen.ip().is_unspecified() {
            bail!(
                "config key `advertise_url`: required with backend = \"jetstream\" when \
                 `listen` is a wildcard address ({}): other brokers forward calls to the URL \
                 this broker advertises, and a wildcard names no host they can reach (e.g. \
                 advertise_url = \"http://10.0.0.5:{}\")",
                self.listen,
                self.listen.port()
            );
        }
        if self.nats_monitor_url.is_empty() && !self.allow_unsynced_cluster {
            bail!(
                "config key `nats_monitor_url`: required with backend = \"jetstream\": the \
                 broker checks that every node runs `sync_interval: always` through its \
                 monitoring endpoint (give each node's http://host:port, comma-separated)"
            );
        }
        Ok(())
    }
}
