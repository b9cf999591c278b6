//! Typed configuration: every default in one place ([`Config::default`]),
//! loaded from an optional TOML file, then `STEVEDORE_*` environment
//! variables, then command-line flags, and validated before anything starts.
//!
//! All three sources go through one setter, [`Config::set`], so a key means the
//! same thing and is parsed the same way wherever it comes from, and an
//! unknown key or bad value is an error that names the key.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Context};

use crate::auth::{self, Token};
use crate::delivery::{
    egress::{parse_networks, Cidr},
    sealing::MasterKey,
};
use crate::store;
pub use crate::store::Recovery;

/// Environment variables `STEVEDORE_<KEY>` override the file, e.g.
/// `STEVEDORE_DATA_DIR` for `data_dir`.
pub const ENV_PREFIX: &str = "STEVEDORE_";

/// The broker's configuration. Field docs are the reference for README's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus metrics listen address (`off` disables the listener).
    pub metrics_listen: Option<SocketAddr>,
    // Console (#16): the webhook maintenance page.
    /// Console (webhook maintenance page) listen address (`off` disables it).
    pub console_listen: Option<SocketAddr>,
    /// The data directory: the event log and the state store.
    pub data_dir: PathBuf,
    /// The state store's page cache in bytes (config key
    /// [`store::STATE_CACHE_KEY`]).
    pub state_cache_bytes: u64,
    /// Size at which the event log starts a new segment file.
    pub log_segment_bytes: u64,
    /// Largest encoded event accepted by Publish.
    pub max_event_bytes: usize,
    /// Most events in one PublishBatch.
    pub max_batch_events: usize,
    /// Largest gRPC request message the server decodes.
    pub max_request_bytes: usize,
    /// Most write operations folded into one group commit (one fsync).
    pub max_group_commit: usize,
    /// How long an event-log commit of few events waits for more while the
    /// runtime is saturated; zero commits at once always.
    pub group_commit_delay: Duration,
    /// What opening the event log does with damaged acknowledged records:
    /// refuse to start (default) or cut the log there (`truncate`).
    pub recovery: Recovery,
    /// Zero the active log segment ahead of the writer, so commits
    /// overwrite blocks instead of growing the file.
    pub log_zero_fill: bool,
    /// Ack wait when a Subscribe request sets none.
    pub default_ack_wait: Duration,
    /// Longest ack wait a Subscribe request may ask for.
    pub max_ack_wait: Duration,
    /// `max_in_flight` when a Subscribe request sets 0.
    pub default_max_in_flight: NonZeroU32,
    /// Largest `max_in_flight` a Subscribe request may ask for.
    pub max_in_flight_limit: NonZeroU32,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// Accept `http://` webhook URLs (otherwise HTTPS only).
    pub allow_http: bool,
    /// Networks exempt from the webhook SSRF guard (which otherwise blocks
    /// loopback, private, link-local, metadata, ... addresses).
    pub allow_networks: Vec<Cidr>,
    /// Most webhook endpoints.
    pub max_endpoints: usize,
    /// An endpoint's `max_in_flight` when it sets 0.
    pub endpoint_max_in_flight: NonZeroU32,
    /// Largest `max_in_flight` an endpoint may ask for.
    pub endpoint_max_in_flight_limit: NonZeroU32,
    /// Events an endpoint's worker holds at once (sending, waiting for a
    /// retry, or queued behind their ordering key).
    pub delivery_window: NonZeroU32,
    /// Recently read events kept decoded with their rendered bodies, shared
    /// by every endpoint's worker (so ten endpoints read, decode and render
    /// an event once, not ten times); 0 turns the sharing off.
    pub shared_events: u32,
    /// Per-attempt timeout when an endpoint sets none.
    pub webhook_timeout: Duration,
    /// The same, for `channel_inventory.updated` (its receivers answer
    /// within 5 s).
    pub channel_inventory_timeout: Duration,
    /// Longest per-attempt timeout an endpoint may set.
    pub max_webhook_timeout: Duration,
    /// Delays before each attempt when an endpoint sets none.
    pub retry_schedule: Vec<Duration>,
    /// Random spread applied to each scheduled delay, in percent (±).
    pub retry_jitter_percent: u8,
    /// Longest `Retry-After` honoured; longer values are clamped to it.
    pub max_retry_after: Duration,
    /// How long a rotated-out secret keeps signing when the request sets no
    /// grace period.
    pub secret_rotation_grace: Duration,
    /// An endpoint failing this long with no success is disabled.
    pub auto_disable_after: Duration,
    /// A delivery's `stevedore.delivery.failing` event is published after
    /// this many failed attempts.
    pub failing_event_after: u32,
    /// Events older than this are removed from the log.
    pub retention_age: Duration,
    /// When the data directory grows beyond this many bytes, the oldest
    /// events are removed (0: no size limit).
    pub retention_max_bytes: u64,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// File holding the master key (base64 of 32 random bytes) that
    /// encrypts endpoint secrets at rest; read when the key is set.
    pub master_key_file: Option<PathBuf>,
    /// The master key, from `master_key_file` or `master_key` (meant for
    /// `STEVEDORE_MASTER_KEY`). `None`: secrets are stored unencrypted.
    pub master_key: Option<MasterKey>,
    /// Bearer tokens (name, role, SHA-256). None: authentication is off and
    /// the listener must be loopback.
    pub tokens: Vec<Token>,
    /// PEM certificate chain for the gRPC listener (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the gRPC listener (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// PEM certificates trusted for HTTPS webhook receivers, besides the
    /// Mozilla roots (receivers behind a private CA).
    pub webhook_ca_file: Option<PathBuf>,
    // #19 egress: proxies.
    /// Proxy for `http://` receivers (`http://[user:password@]host:port`;
    /// the credentials are secret: never logged or repeated in errors);
    /// `Some("")`: none, even if `HTTP_PROXY` is set. `None` after
    /// loading: no proxy.
    pub http_proxy: Option<ProxyUrl>,
    /// Proxy for `https://` receivers (CONNECT); as `http_proxy`.
    pub https_proxy: Option<ProxyUrl>,
    /// Hosts, addresses and CIDR ranges reached directly.
    pub no_proxy: Vec<String>,
    /// Open `Subscribe` streams, over all connections (a budget of their
    /// own: subscribers cannot take the publishers' slots).
    pub max_subscribe_streams: usize,
    /// Open `PublishStream` streams, over all connections.
    pub max_publish_streams: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: calls in progress on one
    /// connection.
    pub max_streams_per_connection: u32,
    /// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`: the largest request metadata
    /// (headers) accepted.
    pub max_metadata_bytes: u32,
    /// Request bytes held at once by all calls in progress: each message's
    /// encoded bytes (from its length prefix) plus its estimated decoded
    /// size. Past it, calls are refused with `RESOURCE_EXHAUSTED`.
    pub max_inflight_request_bytes: usize,
    /// Largest estimated decoded size of one request message, measured on
    /// the wire bytes before decoding.
    pub max_decoded_request_bytes: usize,
    /// Time a new gRPC connection has to send its first request.
    pub handshake_timeout: Duration,
    /// A gRPC connection with no call in progress and no traffic for this
    /// long is closed.
    pub idle_timeout: Duration,
    /// Open gRPC connections; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Most custom headers on one webhook endpoint.
    pub max_endpoint_headers: usize,
    /// Longest custom header value on a webhook endpoint.
    pub max_endpoint_header_bytes: usize,

    // tenants (see `crate::tenant`)
    /// The known tenants; an event, endpoint or token naming another is
    /// refused. Empty: any tenant.
    pub tenants: Vec<String>,
    /// Most endpoints one tenant may have (0: only `max_endpoints` applies).
    pub tenant_max_endpoints: usize,
    /// Events per second one tenant may publish (token bucket; 0: no limit).
    pub tenant_publish_rate: f64,
    /// The bucket's size: events a tenant may publish at once (0: one
    /// second's worth of `tenant_publish_rate`, at least 1).
    pub tenant_publish_burst: u32,
    /// Publish every audit record as a `stevedore.admin.changed` event.
    pub audit_events: bool,
    /// Per-tenant retention ages shorter than `retention_age`: a listed
    /// tenant's events older than its age lose their payload (see
    /// `crate::retention`).
    pub tenant_retention: Vec<(String, Duration)>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A proxy URL as configured. It may hold credentials
/// (`http://user:password@host:port`), so its `Debug` shows only the
/// scheme, host and port: a `Config` printed by a test or a panic repeats
/// no password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(String);

impl From<&str> for ProxyUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl From<String> for ProxyUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl std::ops::Deref for ProxyUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        match authority.rsplit_once('@') {
            Some((_, host)) => write!(f, "\"{scheme}://***@{host}\""),
            None => write!(f, "{:?}", self.0),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            console_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9465))),
            data_dir: PathBuf::from("stevedore-data"),
            state_cache_bytes: 64 * 1024 * 1024,
            log_segment_bytes: 64 * 1024 * 1024,
            max_event_bytes: 1024 * 1024,
            max_batch_events: 10_000,
            max_request_bytes: 16 * 1024 * 1024,
            max_group_commit: 8192,
            group_commit_delay: Duration::from_micros(500),
            recovery: Recovery::Refuse,
            log_zero_fill: true,
            default_ack_wait: Duration::from_secs(30),
            max_ack_wait: Duration::from_secs(12 * 3600),
            default_max_in_flight: NonZeroU32::new(100).expect("non-zero literal"),
            max_in_flight_limit: NonZeroU32::new(10_000).expect("non-zero literal"),
            shutdown_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
            allow_http: false,
            allow_networks: Vec::new(),
            max_endpoints: 10_000,
            endpoint_max_in_flight: NonZeroU32::new(16).expect("non-zero literal"),
            endpoint_max_in_flight_limit: NonZeroU32::new(1000).expect("non-zero literal"),
            delivery_window: NonZeroU32::new(1024).expect("non-zero literal"),
            shared_events: 1024,
            webhook_timeout: Duration::from_secs(30),
            channel_inventory_timeout: Duration::from_secs(5),
            max_webhook_timeout: Duration::from_secs(300),
            retry_schedule: [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
                .map(Duration::from_secs)
                .to_vec(),
            retry_jitter_percent: 20,
            max_retry_after: Duration::from_secs(3600),
            secret_rotation_grace: Duration::from_secs(24 * 3600),
            auto_disable_after: Duration::from_secs(5 * 86_400),
            failing_event_after: 3,
            retention_age: Duration::from_secs(7 * 86_400),
            retention_max_bytes: 0,
            retention_interval: Duration::from_secs(60),
            master_key_file: None,
            master_key: None,
            tokens: Vec::new(),
            tls_cert: None,
            tls_key: None,
            webhook_ca_file: None,
            http_proxy: None,
            https_proxy: None,
            no_proxy: Vec::new(),
            max_subscribe_streams: 1024,
            max_publish_streams: 256,
            max_streams_per_connection: 256,
            max_metadata_bytes: 16 * 1024,
            max_inflight_request_bytes: 256 * 1024 * 1024,
            max_decoded_request_bytes: 128 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            max_endpoint_headers: 32,
            max_endpoint_header_bytes: 4096,
            tenants: Vec::new(),
            tenant_max_endpoints: 0,
            tenant_publish_rate: 0.0,
            tenant_publish_burst: 0,
            audit_events: false,
            tenant_retention: Vec::new(),
        }
    }
}

/// `STEVEDORE_*` variables that are not config keys.
pub const NON_CONFIG_ENV: &[&str] = &["STEVEDORE_LOG"];

/// Every key [`Config::set`] accepts, in README order.
pub const KEYS: &[&str] = &[
    "listen",
    "metrics_listen",
    "console_listen",
    "data_dir",
    store::STATE_CACHE_KEY,
    "log_segment_bytes",
    "max_event_bytes",
    "max_batch_events",
    "max_request_bytes",
    "max_group_commit",
    "group_commit_delay",
    "recovery",
    "log_zero_fill",
    "default_ack_wait",
    "max_ack_wait",
    "default_max_in_flight",
    "max_in_flight_limit",
    "shutdown_timeout",
    "log_format",
    "allow_http",
    "allow_networks",
    "max_endpoints",
    "endpoint_max_in_flight",
    "endpoint_max_in_flight_limit",
    "delivery_window",
    "shared_events",
    "webhook_timeout",
    "channel_inventory_timeout",
    "max_webhook_timeout",
    "retry_schedule",
    "retry_jitter_percent",
    "max_retry_after",
    "secret_rotation_grace",
    "auto_disable_after",
    "failing_event_after",
    "retention_age",
    "retention_max_bytes",
    "retention_interval",
    "master_key_file",
    "master_key",
    "tokens",
    "tls_cert",
    "tls_key",
    "webhook_ca_file",
    // #19 egress
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "max_subscribe_streams",
    "max_publish_streams",
    "max_streams_per_connection",
    "max_metadata_bytes",
    "max_inflight_request_bytes",
    "max_decoded_request_bytes",
    "handshake_timeout",
    "idle_timeout",
    "max_connections",
    "max_endpoint_headers",
    "max_endpoint_header_bytes",
    // tenants
    "tenants",
    "tenant_max_endpoints",
    "tenant_publish_rate",
    "tenant_publish_burst",
    "tenant_retention",
    "audit_events",
];

impl Config {
    /// Loads defaults ← `file` ← environment ← `flags` (later wins), then
    /// validates. `env` is passed in so tests need not touch the process.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut config = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            config
                .apply_toml(&text)
                .with_context(|| format!("config file {}", path.display()))?;
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        // #19 egress: the usual proxy variables, used for keys the file,
        // STEVEDORE_* and flags leave unset (lowercase first, as curl).
        let proxy_env: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "http_proxy"
                        | "HTTP_PROXY"
                        | "https_proxy"
                        | "HTTPS_PROXY"
                        | "no_proxy"
                        | "NO_PROXY"
                )
            })
            .cloned()
            .collect();
        let mut env: Vec<_> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (var, value) in env {
            let key = var[ENV_PREFIX.len()..].to_ascii_lowercase();
            if NON_CONFIG_ENV.contains(&var.as_str()) {
                continue;
            }
            if !KEYS.contains(&key.as_str()) {
                // A misspelt variable must not be silently ignored.
                bail!(
                    "unknown environment variable {var}: no config key `{key}` (known keys: {})",
                    KEYS.join(", ")
                );
            }
            config
                .set(&key, &value)
                .with_context(|| format!("environment variable {var}"))?;
        }
        for (key, value) in flags {
            config
                .set(key, value)
                .with_context(|| format!("flag --{}", key.replace('_', "-")))?;
        }
        config.apply_proxy_env(&proxy_env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_toml(&mut self, text: &str) -> anyhow::Result<()> {
        // toml's own error shows the offending line, which may hold a key
        // or a token: only its position, message and key name are repeated.
        let table: toml::Table = text.parse().map_err(|e| toml_error(text, &e))?;
        for (key, value) in table {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(entries) if key == "tokens" => toml_tokens(entries)?,
                toml::Value::Table(ages) if key == "tenant_retention" => {
                    toml_tenant_retention(ages)?
                }
                // Not echoed: it may hold something secret.
                _ if key == "tokens" => bail!(
                    "config key `tokens`: expected [[tokens]] tables or a \"name:role:sha256,...\" string"
                ),
                // Not echoed either: `master_key = ["<key>"]` is a key.
                other => bail!(
                    "config key `{key}`{}: unsupported value (a TOML {}; expected a string, \
                     integer or boolean)",
                    line_of_key(text, &key)
                        .map(|n| format!(" (line {n})"))
                        .unwrap_or_default(),
                    other.type_str()
                ),
            };
            self.set(&key, &value)?;
        }
        Ok(())
    }

    /// `http_proxy`, `https_proxy` and `no_proxy` from `HTTP_PROXY`,
    /// `HTTPS_PROXY` and `NO_PROXY` (or their lowercase forms, preferred)
    /// when not set otherwise; then an empty proxy setting means none.
    fn apply_proxy_env(&mut self, env: &[(String, String)]) -> anyhow::Result<()> {
        let var = |name: &str| {
            let lower = env.iter().find(|(k, _)| k == name);
            let upper = env.iter().find(|(k, _)| *k == name.to_ascii_uppercase());
            lower.or(upper).map(|(k, v)| (k.clone(), v.clone()))
        };
        for key in ["http_proxy", "https_proxy", "no_proxy"] {
            let unset = match key {
                "http_proxy" => self.http_proxy.is_none(),
                "https_proxy" => self.https_proxy.is_none(),
                _ => self.no_proxy.is_empty(),
            };
            if let (true, Some((name, value))) = (unset, var(key)) {
                self.set(key, &value)
                    .with_context(|| format!("environment variable {name}"))?;
            }
        }
        for p in [&mut self.http_proxy, &mut self.https_proxy] {
            if p.as_deref() == Some("") {
                *p = None;
            }
        }
        Ok(())
    }

    /// Sets one key from its text form; the error names the key.
    pub fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        let bad = |e: String| anyhow!("config key `{key}`: {e} (got {value:?})");
        let path = |value: &str| (!value.is_empty()).then(|| PathBuf::from(value));
        match key {
            // Its errors never repeat the value: it could be a pasted token.
            "tokens" => {
                self.tokens =
                    auth::parse_tokens(value).map_err(|e| anyhow!("config key `tokens`: {e}"))?
            }
            "tls_cert" => self.tls_cert = path(value),
            "tls_key" => self.tls_key = path(value),
            "webhook_ca_file" => self.webhook_ca_file = path(value),
            // #19 egress. Proxy errors never repeat the value (it could
            // hold credentials).
            "http_proxy" | "https_proxy" => {
                if !value.is_empty() {
                    crate::delivery::proxy::parse_proxy(value)
                        .map_err(|e| anyhow!("config key `{key}`: {e}"))?;
                }
                let v = Some(ProxyUrl::from(value));
                if key == "http_proxy" {
                    self.http_proxy = v
                } else {
                    self.https_proxy = v
                }
            }
            "no_proxy" => {
                self.no_proxy = crate::delivery::proxy::parse_no_proxy(value)
                    .map_err(|e| anyhow!("config key `no_proxy`: {e}"))?
            }
            "max_subscribe_streams" => {
                self.max_subscribe_streams = parse_num(value).map_err(bad)?
            }
            "max_publish_streams" => self.max_publish_streams = parse_num(value).map_err(bad)?,
            "max_streams_per_connection" => {
                self.max_streams_per_connection = parse_num(value).map_err(bad)?
            }
            "max_metadata_bytes" => self.max_metadata_bytes = parse_num(value).map_err(bad)?,
            "max_inflight_request_bytes" => {
                self.max_inflight_request_bytes = parse_num(value).map_err(bad)?
            }
            "max_decoded_request_bytes" => {
                self.max_decoded_request_bytes = parse_num(value).map_err(bad)?
            }
            "handshake_timeout" => self.handshake_timeout = parse_duration(value).map_err(bad)?,
            "idle_timeout" => self.idle_timeout = parse_duration(value).map_err(bad)?,
            "max_connections" => self.max_connections = parse_num(value).map_err(bad)?,
            "max_endpoint_headers" => self.max_endpoint_headers = parse_num(value).map_err(bad)?,
            "max_endpoint_header_bytes" => {
                self.max_endpoint_header_bytes = parse_num(value).map_err(bad)?
            }
            // tenants
            "tenants" => {
                let mut tenants: Vec<String> = Vec::new();
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    crate::tenant::check_name(t).map_err(bad)?;
                    if !tenants.iter().any(|k| k == t) {
                        tenants.push(t.to_owned());
                    }
                }
                self.tenants = tenants;
            }
            "tenant_retention" => {
                self.tenant_retention = crate::tenant::parse_retention(value).map_err(bad)?
            }
            "tenant_max_endpoints" => self.tenant_max_endpoints = parse_num(value).map_err(bad)?,
            "tenant_publish_rate" => self.tenant_publish_rate = parse_num(value).map_err(bad)?,
            "tenant_publish_burst" => self.tenant_publish_burst = parse_num(value).map_err(bad)?,
            "audit_events" => {
                self.audit_events = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad("expected true or false".into())),
                }
            }
            "listen" => self.listen = value.parse().map_err(|e| bad(format!("{e}")))?,
            "metrics_listen" => {
                self.metrics_listen = match value {
                    "off" | "" => None,
                    v => Some(v.parse().map_err(|e| bad(format!("{e} (or `off`)")))?),
                }
            }
            "console_listen" => {
                self.console_listen = match value {
                    "off" | "" => None,
                    v => Some(v.parse().map_err(|e| bad(format!("{e} (or `off`)")))?),
                }
            }
            "data_dir" => {
                if value.is_empty() {
                    return Err(bad("must not be empty".into()));
                }
                self.data_dir = PathBuf::from(value)
            }
            store::STATE_CACHE_KEY => self.state_cache_bytes = parse_num(value).map_err(bad)?,
            "log_segment_bytes" => self.log_segment_bytes = parse_num(value).map_err(bad)?,
            "max_event_bytes" => self.max_event_bytes = parse_num(value).map_err(bad)?,
            "max_batch_events" => self.max_batch_events = parse_num(value).map_err(bad)?,
            "max_request_bytes" => self.max_request_bytes = parse_num(value).map_err(bad)?,
            "max_group_commit" => self.max_group_commit = parse_num(value).map_err(bad)?,
            "group_commit_delay" => self.group_commit_delay = parse_duration(value).map_err(bad)?,
            "recovery" => {
                self.recovery = match value {
                    "refuse" => Recovery::Refuse,
                    "truncate" => Recovery::Truncate,
                    _ => return Err(bad("expected refuse or truncate".into())),
                }
            }
            "log_zero_fill" => {
                self.log_zero_fill = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad("expected true or false".into())),
                }
            }
            "default_ack_wait" => self.default_ack_wait = parse_duration(value).map_err(bad)?,
            "max_ack_wait" => self.max_ack_wait = parse_duration(value).map_err(bad)?,
            "default_max_in_flight" => {
                self.default_max_in_flight = parse_num(value).map_err(bad)?
            }
            "max_in_flight_limit" => self.max_in_flight_limit = parse_num(value).map_err(bad)?,
            "shutdown_timeout" => self.shutdown_timeout = parse_duration(value).map_err(bad)?,
            "log_format" => self.log_format = value.parse().map_err(bad)?,
            "allow_http" => {
                self.allow_http = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad("expected true or false".into())),
                }
            }
            "allow_networks" => self.allow_networks = parse_networks(value).map_err(bad)?,
            "max_endpoints" => self.max_endpoints = parse_num(value).map_err(bad)?,
            "endpoint_max_in_flight" => {
                self.endpoint_max_in_flight = parse_num(value).map_err(bad)?
            }
            "endpoint_max_in_flight_limit" => {
                self.endpoint_max_in_flight_limit = parse_num(value).map_err(bad)?
            }
            "delivery_window" => self.delivery_window = parse_num(value).map_err(bad)?,
            "shared_events" => self.shared_events = parse_num(value).map_err(bad)?,
            "webhook_timeout" => self.webhook_timeout = parse_duration(value).map_err(bad)?,
            "channel_inventory_timeout" => {
                self.channel_inventory_timeout = parse_duration(value).map_err(bad)?
            }
            "max_webhook_timeout" => {
                self.max_webhook_timeout = parse_duration(value).map_err(bad)?
            }
            "retry_schedule" => {
                self.retry_schedule = value
                    .split(',')
                    .map(parse_duration)
                    .collect::<Result<_, _>>()
                    .map_err(bad)?
            }
            "retry_jitter_percent" => self.retry_jitter_percent = parse_num(value).map_err(bad)?,
            "max_retry_after" => self.max_retry_after = parse_duration(value).map_err(bad)?,
            "secret_rotation_grace" => {
                self.secret_rotation_grace = parse_duration(value).map_err(bad)?
            }
            "auto_disable_after" => self.auto_disable_after = parse_duration(value).map_err(bad)?,
            "failing_event_after" => self.failing_event_after = parse_num(value).map_err(bad)?,
            "retention_age" => self.retention_age = parse_duration(value).map_err(bad)?,
            "retention_max_bytes" => self.retention_max_bytes = parse_num(value).map_err(bad)?,
            "retention_interval" => self.retention_interval = parse_duration(value).map_err(bad)?,
            "master_key_file" => {
                if self.master_key.is_some() && self.master_key_file.is_none() {
                    bail!("config key `master_key_file`: `master_key` is also set; use one of the two");
                }
                let text = std::fs::read_to_string(value)
                    .map_err(|e| bad(format!("cannot read the key file: {e}")))?;
                // Never echo the file's contents.
                let key = MasterKey::from_base64(&text)
                    .map_err(|e| anyhow!("config key `master_key_file`: {value}: the key {e}"))?;
                self.master_key_file = Some(PathBuf::from(value));
                self.master_key = Some(key);
            }
            "master_key" => {
                if self.master_key_file.is_some() {
                    bail!("config key `master_key`: `master_key_file` is also set; use one of the two");
                }
                // Never echo the value.
                let key = MasterKey::from_base64(value)
                    .map_err(|e| anyhow!("config key `master_key`: {e}"))?;
                self.master_key = Some(key);
            }
            _ => bail!(
                "unknown config key `{key}` (known keys: {})",
                KEYS.join(", ")
            ),
        }
        Ok(())
    }

    /// Rejects combinations that would fail later.
    pub fn validate(&self) -> anyhow::Result<()> {
        let check = |ok: bool, key: &str, why: &str| {
            if ok {
                Ok(())
            } else {
                Err(anyhow!("config key `{key}`: {why}"))
            }
        };
        check(
            self.state_cache_bytes >= 1024 * 1024,
            store::STATE_CACHE_KEY,
            "must be at least 1 MiB",
        )?;
        check(
            (64 * 1024..=1024 * 1024 * 1024).contains(&self.log_segment_bytes),
            "log_segment_bytes",
            "must be between 64 KiB and 1 GiB",
        )?;
        check(
            (1024..=64 * 1024 * 1024).contains(&self.max_event_bytes),
            "max_event_bytes",
            "must be between 1 KiB and 64 MiB",
        )?;
        check(
            self.max_batch_events >= 1,
            "max_batch_events",
            "must be at least 1",
        )?;
        check(
            self.max_request_bytes >= self.max_event_bytes + 1024,
            "max_request_bytes",
            "must exceed max_event_bytes by at least 1 KiB",
        )?;
        check(
            self.max_group_commit >= 1,
            "max_group_commit",
            "must be at least 1",
        )?;
        check(
            self.group_commit_delay <= MAX_GROUP_COMMIT_DELAY,
            "group_commit_delay",
            "must be at most 10ms",
        )?;
        check(
            self.default_ack_wait >= MIN_ACK_WAIT,
            "default_ack_wait",
            "must be at least 10ms",
        )?;
        check(
            self.max_ack_wait >= self.default_ack_wait,
            "max_ack_wait",
            "must be at least default_ack_wait",
        )?;
        check(
            self.max_in_flight_limit >= self.default_max_in_flight,
            "max_in_flight_limit",
            "must be at least default_max_in_flight",
        )?;
        check(
            !self.shutdown_timeout.is_zero(),
            "shutdown_timeout",
            "must be positive",
        )?;
        check(
            self.endpoint_max_in_flight_limit >= self.endpoint_max_in_flight,
            "endpoint_max_in_flight_limit",
            "must be at least endpoint_max_in_flight",
        )?;
        check(
            self.delivery_window >= self.endpoint_max_in_flight_limit,
            "delivery_window",
            "must be at least endpoint_max_in_flight_limit",
        )?;
        for (key, t) in [
            ("webhook_timeout", self.webhook_timeout),
            ("channel_inventory_timeout", self.channel_inventory_timeout),
        ] {
            check(
                t >= MIN_WEBHOOK_TIMEOUT && t <= self.max_webhook_timeout,
                key,
                "must be between 10ms and max_webhook_timeout",
            )?;
        }
        check(
            (1..=MAX_RETRY_ATTEMPTS).contains(&self.retry_schedule.len()),
            "retry_schedule",
            "must list 1 to 50 delays",
        )?;
        check(
            self.retry_schedule.iter().all(|d| *d <= MAX_RETRY_DELAY),
            "retry_schedule",
            "delays must be at most 7d",
        )?;
        check(
            !self.auto_disable_after.is_zero(),
            "auto_disable_after",
            "must be positive",
        )?;
        check(
            self.failing_event_after >= 1,
            "failing_event_after",
            "must be at least 1",
        )?;
        check(
            !self.retention_age.is_zero(),
            "retention_age",
            "must be positive",
        )?;
        check(
            self.retention_max_bytes == 0 || self.retention_max_bytes >= 1024 * 1024,
            "retention_max_bytes",
            "must be 0 (no limit) or at least 1 MiB",
        )?;
        check(
            self.retention_interval >= Duration::from_millis(10),
            "retention_interval",
            "must be at least 10ms",
        )?;
        check(
            self.retry_jitter_percent <= 100,
            "retry_jitter_percent",
            "must be at most 100",
        )?;
        check(
            self.max_subscribe_streams >= 1,
            "max_subscribe_streams",
            "must be at least 1",
        )?;
        check(
            self.max_publish_streams >= 1,
            "max_publish_streams",
            "must be at least 1",
        )?;
        check(
            self.max_decoded_request_bytes >= 1024 * 1024,
            "max_decoded_request_bytes",
            "must be at least 1 MiB",
        )?;
        // A largest request must fit when nothing else is in flight.
        check(
            self.max_inflight_request_bytes
                >= self
                    .max_request_bytes
                    .saturating_add(self.max_decoded_request_bytes)
                    .saturating_add(5),
            "max_inflight_request_bytes",
            "must be at least max_request_bytes + max_decoded_request_bytes + 5",
        )?;
        check(
            !self.handshake_timeout.is_zero(),
            "handshake_timeout",
            "must be more than 0s",
        )?;
        check(
            !self.idle_timeout.is_zero(),
            "idle_timeout",
            "must be more than 0s",
        )?;
        check(
            self.max_connections >= 1,
            "max_connections",
            "must be at least 1",
        )?;
        check(
            self.max_streams_per_connection >= 1,
            "max_streams_per_connection",
            "must be at least 1",
        )?;
        check(
            self.max_metadata_bytes >= 1024,
            "max_metadata_bytes",
            "must be at least 1024",
        )?;
        check(
            self.max_endpoint_header_bytes >= 1,
            "max_endpoint_header_bytes",
            "must be at least 1",
        )?;
        // tenants
        check(
            self.tenant_publish_rate.is_finite() && self.tenant_publish_rate >= 0.0,
            "tenant_publish_rate",
            "must be a non-negative number",
        )?;
        for (tenant, age) in &self.tenant_retention {
            if *age >= self.retention_age {
                bail!(
                    "config key `tenant_retention`: {tenant}'s age must be shorter than \
                     retention_age ({:?}); every event leaves after retention_age anyway",
                    self.retention_age
                );
            }
            if !self.tenants.is_empty() && !self.tenants.contains(tenant) {
                bail!("config key `tenant_retention`: {tenant} is not listed in `tenants`");
            }
        }
        if !self.tenants.is_empty() {
            for t in &self.tokens {
                if let Some(tenant) = &t.tenant {
                    if !self.tenants.contains(tenant) {
                        bail!(
                            "config key `tokens`: token {} is scoped to a tenant not listed in `tenants`",
                            t.name
                        );
                    }
                }
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => bail!("config key `tls_key`: required when tls_cert is set"),
            (None, Some(_)) => bail!("config key `tls_cert`: required when tls_key is set"),
            _ => {}
        }
        if let Some(addr) = self.console_listen {
            self.check_console_listen(addr)?;
        }
        self.check_listen(self.listen)
    }

    /// Whether the broker may serve on `addr`: without tokens anyone who can
    /// connect could do anything, so only loopback is allowed. `run` checks
    /// the listener it is handed again, however it was bound.
    pub fn check_listen(&self, addr: SocketAddr) -> anyhow::Result<()> {
        if self.tokens.is_empty() && !addr.ip().is_loopback() {
            bail!(
                "config key `listen`: {addr} is not a loopback address, and authentication \
                 is off; configure `tokens` (see `stevedore hash-token`) to listen beyond \
                 loopback"
            );
        }
        Ok(())
    }

    /// The console may leave loopback only with tokens (an admin must log
    /// in) and TLS (the session cookie and the token must not cross the
    /// network in plaintext); it reuses the gRPC listener's certificate.
    pub fn check_console_listen(&self, addr: SocketAddr) -> anyhow::Result<()> {
        if addr.ip().is_loopback() {
            return Ok(());
        }
        if self.tokens.is_empty() {
            bail!(
                "config key `console_listen`: {addr} is not a loopback address, and \
                 authentication is off; configure `tokens` with an admin token"
            );
        }
        if !self.tls_enabled() {
            bail!(
                "config key `console_listen`: {addr} is not a loopback address, and TLS is \
                 off; set `tls_cert` and `tls_key` (the console uses the gRPC listener's \
                 certificate)"
            );
        }
        Ok(())
    }

    /// Whether TLS is configured for the gRPC listener.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }
}

/// A TOML syntax error as position, message and the key being defined,
/// never the text around it: toml's own `Display` quotes the whole line,
/// and a line with a missing quote is typically `master_key = "<the key>`.
fn toml_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let at = e.span().map_or(text.len(), |s| s.start).min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    // The key whose value is broken: the nearest `key =` at or above the
    // error, under its `[table]` header if any.
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let mut key = None;
    let mut table = None;
    for l in text[..line_end].lines().rev() {
        let l = l.trim();
        if let Some(h) = l.strip_prefix('[') {
            let h = h.trim_start_matches('[').trim_end_matches(']').trim();
            table = bare_key(h).map(str::to_owned);
            break;
        }
        if key.is_none() {
            key = l.split_once('=').and_then(|(k, _)| bare_key(k.trim()));
        }
    }
    let name = match (table, key) {
        (Some(t), Some(k)) => format!(" (key `{t}.{k}`)"),
        (None, Some(k)) => format!(" (key `{k}`)"),
        (Some(t), None) => format!(" (in `[{t}]`)"),
        (None, None) => String::new(),
    };
    // toml's messages name expected characters and duplicate key names,
    // not values; several lines become one.
    let message = e.message().trim().replace('\n', "; ");
    anyhow!("TOML syntax error at line {line}, column {column}{name}: {message}")
}

/// `s` if it is a bare (or dotted bare) TOML key of a sane length: a quoted
/// "key" could be anything, a pasted secret included.
fn bare_key(s: &str) -> Option<&str> {
    (!s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    .then_some(s)
}

/// The line where `key = ...` is written at the top level, if found.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// A `[tenant_retention]` table (`acme = "1d"`) in the compact form
/// (`acme=1d,...`).
fn toml_tenant_retention(ages: toml::Table) -> anyhow::Result<String> {
    let mut out = Vec::with_capacity(ages.len());
    for (tenant, age) in ages {
        let toml::Value::String(age) = age else {
            bail!("config key `tenant_retention.{tenant}`: expected a duration string like \"1d\"");
        };
        out.push(format!("{tenant}={age}"));
    }
    Ok(out.join(","))
}

/// `[[tokens]]` tables (`name`, `role`, `sha256`) in the compact form.
fn toml_tokens(entries: Vec<toml::Value>) -> anyhow::Result<String> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let toml::Value::Table(mut t) = entry else {
            bail!("config key `tokens[{i}]`: expected a table with name, role and sha256");
        };
        let mut field = |f: &str| match t.remove(f) {
            Some(toml::Value::String(s)) => Ok(s),
            _ => Err(anyhow!("config key `tokens[{i}].{f}`: required string")),
        };
        let (name, role, sha256) = (field("name")?, field("role")?, field("sha256")?);
        // tenants: `tenant = "acme"` scopes the token (compact form `role@tenant`).
        let role = match t.remove("tenant") {
            None => role,
            Some(toml::Value::String(tenant)) => format!("{role}@{tenant}"),
            Some(_) => bail!("config key `tokens[{i}].tenant`: expected a string"),
        };
        let line = format!("{name}:{role}:{sha256}");
        if let Some(extra) = t.keys().next() {
            bail!(
                "config key `tokens[{i}]`: unknown field `{extra}` (known: name, role, tenant, sha256)"
            );
        }
        out.push(line);
    }
    Ok(out.join(","))
}

/// The shortest per-attempt webhook timeout.
pub const MIN_WEBHOOK_TIMEOUT: Duration = Duration::from_millis(10);
/// Most attempts in a retry schedule.
pub const MAX_RETRY_ATTEMPTS: usize = 50;
/// Longest delay in a retry schedule.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 86_400);

/// The shortest ack wait a consumer may use.
pub const MIN_ACK_WAIT: Duration = Duration::from_millis(10);

/// Longest `group_commit_delay` accepted: it is added to a commit's latency.
pub const MAX_GROUP_COMMIT_DELAY: Duration = Duration::from_millis(10);

fn parse_num<T: std::str::FromStr>(value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|e| format!("{e}"))
}

/// Parses `250ms`, `30s`, `5m`, `2h`, `1d` (one number and one unit).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "missing unit (us, ms, s, m, h or d)".to_string())?;
    let (number, unit) = value.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a whole number followed by us, ms, s, m, h or d".to_string())?;
    let unit_us: u64 = match unit {
        "us" => 1,
        "ms" => 1000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return Err(format!("unknown unit `{unit}` (use us, ms, s, m, h or d)")),
    };
    n.checked_mul(unit_us)
        .map(Duration::from_micros)
        .ok_or_else(|| "too large".to_string())
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected `text` or `json`".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn request_and_connection_bounds() {
        let c = Config::load(
            None,
            env(&[
                ("STEVEDORE_HANDSHAKE_TIMEOUT", "2s"),
                ("STEVEDORE_IDLE_TIMEOUT", "1m"),
                ("STEVEDORE_MAX_CONNECTIONS", "50"),
                ("STEVEDORE_MAX_DECODED_REQUEST_BYTES", "2097152"),
                ("STEVEDORE_MAX_INFLIGHT_REQUEST_BYTES", "33554432"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 50);
        assert_eq!(c.max_decoded_request_bytes, 2 * 1024 * 1024);
        assert_eq!(c.max_inflight_request_bytes, 32 * 1024 * 1024);
        for (var, value, key) in [
            ("STEVEDORE_HANDSHAKE_TIMEOUT", "0s", "handshake_timeout"),
            ("STEVEDORE_IDLE_TIMEOUT", "0s", "idle_timeout"),
            ("STEVEDORE_MAX_CONNECTIONS", "0", "max_connections"),
            ("STEVEDORE_MAX_PUBLISH_STREAMS", "0", "max_publish_streams"),
            (
                "STEVEDORE_MAX_SUBSCRIBE_STREAMS",
                "0",
                "max_subscribe_streams",
            ),
            // The largest request (16 MiB + 128 MiB decoded) must fit.
            (
                "STEVEDORE_MAX_INFLIGHT_REQUEST_BYTES",
                "16777216",
                "max_inflight_request_bytes",
            ),
        ] {
            let err = Config::load(None, env(&[(var, value)]), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn precedence_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/from/file\"\nmax_batch_events = 7\ndefault_ack_wait = \"2s\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("STEVEDORE_DATA_DIR", "/from/env"),
                ("STEVEDORE_LISTEN", "127.0.0.1:2"),
                ("UNRELATED", "x"),
                ("STEVEDORE_LOG", "debug"),
            ]),
            &[("listen", "127.0.0.1:3".into())],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:3".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.max_batch_events, 7);
        assert_eq!(c.default_ack_wait, Duration::from_secs(2));

        let c = Config::load(
            None,
            env(&[
                ("STEVEDORE_ALLOW_HTTP", "true"),
                ("STEVEDORE_RETRY_SCHEDULE", "0s,100ms,2m"),
            ]),
            &[],
        )
        .unwrap();
        assert!(c.allow_http);
        assert_eq!(
            c.retry_schedule,
            vec![
                Duration::ZERO,
                Duration::from_millis(100),
                Duration::from_secs(120)
            ]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::load(None, env(&[("STEVEDORE_LISTEN", "nope")]), &[]).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("STEVEDORE_LISTEN") && text.contains("`listen`"),
            "{text}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let text = format!(
            "{:#}",
            Config::load(Some(&file), env(&[]), &[]).unwrap_err()
        );
        assert!(text.contains("unknown config key `lisen`"), "{text}");

        let text = format!(
            "{:#}",
            Config::load(None, env(&[("STEVEDORE_MAX_ACK_WAIT", "1ms")]), &[]).unwrap_err()
        );
        assert!(text.contains("`max_ack_wait`"), "{text}");

        let text = format!(
            "{:#}",
            Config::load(None, env(&[("STEVEDORE_GROUP_COMMIT_DELAY", "20ms")]), &[]).unwrap_err()
        );
        assert!(
            text.contains("`group_commit_delay`") && text.contains("at most 10ms"),
            "{text}"
        );
        let c = Config::load(None, env(&[("STEVEDORE_GROUP_COMMIT_DELAY", "0us")]), &[]).unwrap();
        assert_eq!(c.group_commit_delay, Duration::ZERO);

        let text = format!(
            "{:#}",
            Config::load(
                None,
                env(&[("STEVEDORE_DEFAULT_ACK_WAIT", "5 parsecs")]),
                &[]
            )
            .unwrap_err()
        );
        assert!(text.contains("`default_ack_wait`"), "{text}");

        let text = format!(
            "{:#}",
            Config::load(None, env(&[("STEVEDORE_DATADIR", "/x")]), &[]).unwrap_err()
        );
        assert!(text.contains("STEVEDORE_DATADIR"), "{text}");
    }

    /// #19 egress: the config keys win over the usual variables, which
    /// fill what is unset (lowercase first); an empty key means no proxy
    /// whatever the environment says; bad values name the key and hide
    /// the value.
    #[test]
    fn proxies_from_keys_and_environment() {
        let c = Config::load(
            None,
            env(&[
                ("HTTPS_PROXY", "http://upper:1"),
                ("https_proxy", "http://lower:2"),
                ("HTTP_PROXY", "http://h:3"),
                ("NO_PROXY", "internal.corp,10.0.0.0/8"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.https_proxy.as_deref(), Some("http://lower:2"));
        assert_eq!(c.http_proxy.as_deref(), Some("http://h:3"));
        assert_eq!(c.no_proxy, ["internal.corp", "10.0.0.0/8"]);
        let c = Config::load(
            None,
            env(&[
                ("STEVEDORE_HTTPS_PROXY", "http://mine:4"),
                ("STEVEDORE_HTTP_PROXY", ""),
                ("HTTPS_PROXY", "http://upper:1"),
                ("HTTP_PROXY", "http://h:3"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.https_proxy.as_deref(), Some("http://mine:4"));
        assert_eq!(c.http_proxy, None);
        let c = Config::load(
            None,
            env(&[("HTTPS_PROXY", "http://egress:p%40ss@proxy.corp:3128")]),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.https_proxy.as_deref(),
            Some("http://egress:p%40ss@proxy.corp:3128")
        );
        // A printed config (a test's or a panic's) shows where the proxy is,
        // not who logs in to it.
        let printed = format!("{c:?}");
        assert!(printed.contains("http://***@proxy.corp:3128"), "{printed}");
        assert!(
            !printed.contains("p%40ss") && !printed.contains("egress:"),
            "{printed}"
        );
        for (var, value, key) in [
            // Credentials are allowed (#19), but not malformed ones.
            (
                "STEVEDORE_HTTPS_PROXY",
                "http://user:s3cret%ff@p:1",
                "https_proxy",
            ),
            ("HTTP_PROXY", "socks5://s3cret:1", "http_proxy"),
            ("NO_PROXY", "a b", "no_proxy"),
        ] {
            let e = format!(
                "{:#}",
                Config::load(None, env(&[(var, value)]), &[]).unwrap_err()
            );
            assert!(e.contains(&format!("`{key}`")), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn allow_networks() {
        let c = Config::load(
            None,
            env(&[("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8,::1/128")]),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.allow_networks,
            vec![Cidr::v4(127, 0, 0, 0, 8), "::1/128".parse().unwrap()]
        );
        let text = format!(
            "{:#}",
            Config::load(
                None,
                env(&[("STEVEDORE_ALLOW_NETWORKS", "10.0.0.1/8")]),
                &[]
            )
            .unwrap_err()
        );
        assert!(
            text.contains("`allow_networks`") && text.contains("10.0.0.0/8"),
            "{text}"
        );
    }

    #[test]
    fn tenant_scoped_tokens_and_known_tenants() {
        let h = crate::auth::to_hex(&crate::auth::hash_token(b"t"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!(
                "tenants = \"acme,beta\"\n\n[[tokens]]\nname = \"acme-ops\"\nrole = \"admin\"\ntenant = \"acme\"\nsha256 = \"{h}\"\n"
            ),
        )
        .unwrap();
        let c = Config::load(Some(&file), Vec::new(), &[]).unwrap();
        assert_eq!(c.tenants, ["acme", "beta"]);
        assert_eq!(c.tokens[0].tenant.as_deref(), Some("acme"));
        // A token scoped to a tenant not in `tenants` is refused, naming the key.
        let env = vec![("STEVEDORE_TENANTS".to_string(), "beta".to_string())];
        let err = format!("{:#}", Config::load(Some(&file), env, &[]).unwrap_err());
        assert!(
            err.contains("`tokens`") && err.contains("acme-ops"),
            "{err}"
        );
        let env = vec![("STEVEDORE_TENANTS".to_string(), "a b".to_string())];
        let err = format!("{:#}", Config::load(None, env, &[]).unwrap_err());
        assert!(err.contains("`tenants`"), "{err}");
        let env = vec![(
            "STEVEDORE_TENANT_PUBLISH_RATE".to_string(),
            "-1".to_string(),
        )];
        let err = format!("{:#}", Config::load(None, env, &[]).unwrap_err());
        assert!(err.contains("`tenant_publish_rate`"), "{err}");
    }

    #[test]
    fn tenant_retention_from_toml_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.toml");
        std::fs::write(
            &file,
            "retention_age = \"7d\"\n\n[tenant_retention]\nacme = \"1d\"\nbeta = \"12h\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), Vec::new(), &[]).unwrap();
        let h = Duration::from_secs(3600);
        assert_eq!(
            c.tenant_retention,
            [("acme".to_string(), 24 * h), ("beta".to_string(), 12 * h)]
        );
        let env = |v: &str| vec![("STEVEDORE_TENANT_RETENTION".to_string(), v.to_string())];
        let c = Config::load(Some(&file), env("acme=2h"), &[]).unwrap();
        assert_eq!(c.tenant_retention, [("acme".to_string(), 2 * h)]);
        for (value, says) in [
            ("acme=8d", "shorter than retention_age"),
            ("acme", "tenant=duration"),
            ("acme=1d,acme=2h", "twice"),
            ("a b=1d", "[A-Za-z0-9._-]"),
            ("acme=0s", "positive"),
            ("acme=soon", "whole number"),
        ] {
            let err = format!("{:#}", Config::load(None, env(value), &[]).unwrap_err());
            assert!(
                err.contains("`tenant_retention`") && err.contains(says),
                "{value}: {err}"
            );
        }
        let mut known = env("acme=1d");
        known.push(("STEVEDORE_TENANTS".to_string(), "beta".to_string()));
        let err = format!("{:#}", Config::load(None, known, &[]).unwrap_err());
        assert!(err.contains("not listed in `tenants`"), "{err}");
        std::fs::write(&file, "[tenant_retention]\nacme = 5\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load(Some(&file), Vec::new(), &[]).unwrap_err()
        );
        assert!(err.contains("`tenant_retention.acme`"), "{err}");
    }

    #[test]
    fn tokens_from_toml_and_env() {
        let hash = |t: &str| crate::auth::to_hex(&crate::auth::hash_token(t.as_bytes()));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            format!(
                "listen = \"0.0.0.0:50051\"\n\n[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n\n[[tokens]]\nname = \"feed\"\nrole = \"publisher\"\nsha256 = \"{}\"\n",
                hash("a"),
                hash("b")
            ),
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[]), &[]).unwrap();
        assert_eq!(c.tokens.len(), 2);
        assert_eq!(c.tokens[1].name, "feed");
        assert_eq!(c.tokens[1].role, crate::auth::Role::Publisher);

        // The environment replaces the file's list.
        let c = Config::load(
            Some(&file),
            env(&[(
                "STEVEDORE_TOKENS",
                &format!("reader:subscriber:{}", hash("c")),
            )]),
            &[],
        )
        .unwrap();
        assert_eq!(c.tokens.len(), 1);
        assert_eq!(c.tokens[0].role, crate::auth::Role::Subscriber);

        // Without tokens, a non-loopback listen address is refused.
        let err = Config::load(Some(&file), env(&[("STEVEDORE_TOKENS", "")]), &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("config key `listen`"),
            "{err:#}"
        );

        // Errors name the key (and the entry) and never echo the value.
        std::fs::write(
            &file,
            "[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"my-secret-token\"\n",
        )
        .unwrap();
        let text = format!(
            "{:#}",
            Config::load(Some(&file), env(&[]), &[]).unwrap_err()
        );
        assert!(
            text.contains("`tokens`") && !text.contains("my-secret"),
            "{text}"
        );
        std::fs::write(&file, "[[tokens]]\nname = \"ops\"\nrole = \"admin\"\n").unwrap();
        let text = format!(
            "{:#}",
            Config::load(Some(&file), env(&[]), &[]).unwrap_err()
        );
        assert!(text.contains("`tokens[0].sha256`"), "{text}");
        let text = format!(
            "{:#}",
            Config::load(None, env(&[("STEVEDORE_TOKENS", "my-secret-token")]), &[]).unwrap_err()
        );
        assert!(
            text.contains("STEVEDORE_TOKENS") && !text.contains("my-secret"),
            "{text}"
        );
    }

    #[test]
    fn master_key_from_env_or_file_never_echoed() {
        let key = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
        let c = Config::load(None, env(&[("STEVEDORE_MASTER_KEY", key)]), &[]).unwrap();
        assert_eq!(c.master_key, Some(MasterKey::from_bytes([42; 32])));
        assert!(!format!("{c:?}").contains(key));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("master.key");
        std::fs::write(&file, format!("{key}\n")).unwrap();
        let path = file.to_str().unwrap();
        let c = Config::load(None, env(&[("STEVEDORE_MASTER_KEY_FILE", path)]), &[]).unwrap();
        assert_eq!(c.master_key, Some(MasterKey::from_bytes([42; 32])));

        for (vars, want) in [
            (
                vec![("STEVEDORE_MASTER_KEY_FILE", "/no/such/key")],
                "`master_key_file`",
            ),
            (vec![("STEVEDORE_MASTER_KEY", "c2hvcnQ=")], "`master_key`"),
            (
                vec![
                    ("STEVEDORE_MASTER_KEY", key),
                    ("STEVEDORE_MASTER_KEY_FILE", path),
                ],
                "use one of the two",
            ),
        ] {
            let text = format!("{:#}", Config::load(None, env(&vars), &[]).unwrap_err());
            assert!(text.contains(want), "{text}");
            assert!(!text.contains(key) && !text.contains("c2hvcnQ="), "{text}");
        }
        std::fs::write(&file, "not a key").unwrap();
        let text = format!(
            "{:#}",
            Config::load(None, env(&[("STEVEDORE_MASTER_KEY_FILE", path)]), &[]).unwrap_err()
        );
        assert!(
            text.contains("`master_key_file`") && !text.contains("not a key"),
            "{text}"
        );
    }

    /// Issue #21: a syntax error on a secret's line, or a value of the
    /// wrong type, names the key and the line and never repeats the value.
    #[test]
    fn config_errors_never_echo_a_secret() {
        let key = "S3cr3tKeyMaterialKioqKioqKioqKioqKioqKio=";
        let token = "raw-token-never-echoed-0123456789";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        for (toml, name, line) in [
            (
                format!("listen = \"127.0.0.1:1\"\nmaster_key = \"{key}\n"),
                "`master_key`",
                "line 2",
            ),
            (
                format!("master_key = [\"{key}\"]\n"),
                "`master_key`",
                "line 1",
            ),
            (
                format!("master_key = {{ k = \"{key}\" }}\n"),
                "`master_key`",
                "line 1",
            ),
            (format!("master_key = '{key}\n"), "`master_key`", "line 1"),
            (
                // Unterminated to the end of the file: reported there.
                format!("master_key = \"\"\"{key}\n"),
                "`master_key`",
                "line 2",
            ),
            (
                format!("[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{token}\n"),
                "`tokens.sha256`",
                "line 4",
            ),
            (
                format!("[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = [\"{token}\"]\n"),
                "`tokens",
                "",
            ),
        ] {
            std::fs::write(&file, &toml).unwrap();
            let text = format!(
                "{:#}",
                Config::load(Some(&file), env(&[]), &[]).unwrap_err()
            );
            assert!(text.contains(name) && text.contains(line), "{toml}: {text}");
            for secret in [key, token, &key[..12], &token[..12]] {
                assert!(!text.contains(secret), "{toml}: {text}");
            }
        }
        // The environment: the value is never repeated either.
        for (var, value) in [
            ("STEVEDORE_MASTER_KEY", format!("\"{key}")),
            ("STEVEDORE_MASTER_KEY", format!("[\"{key}\"]")),
            ("STEVEDORE_TOKENS", format!("ops:admin:{token}")),
        ] {
            let text = format!(
                "{:#}",
                Config::load(None, env(&[(var, &value)]), &[]).unwrap_err()
            );
            assert!(text.contains(var), "{text}");
            assert!(
                !text.contains(&key[..12]) && !text.contains(&token[..12]),
                "{text}"
            );
        }
    }

    #[test]
    fn tls_keys_come_in_pairs() {
        let text = format!(
            "{:#}",
            Config::load(None, env(&[("STEVEDORE_TLS_CERT", "/c.pem")]), &[]).unwrap_err()
        );
        assert!(text.contains("config key `tls_key`"), "{text}");
        let text = format!(
            "{:#}",
            Config::load(None, env(&[("STEVEDORE_TLS_KEY", "/k.pem")]), &[]).unwrap_err()
        );
        assert!(text.contains("config key `tls_cert`"), "{text}");
        let c = Config::load(
            None,
            env(&[
                ("STEVEDORE_TLS_CERT", "/c.pem"),
                ("STEVEDORE_TLS_KEY", "/k.pem"),
                ("STEVEDORE_MAX_SUBSCRIBE_STREAMS", "5"),
                ("STEVEDORE_MAX_PUBLISH_STREAMS", "6"),
                ("STEVEDORE_MAX_STREAMS_PER_CONNECTION", "7"),
            ]),
            &[],
        )
        .unwrap();
        assert!(c.tls_enabled());
        assert_eq!(
            (
                c.max_subscribe_streams,
                c.max_publish_streams,
                c.max_streams_per_connection
            ),
            (5, 6, 7)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
    }
}
