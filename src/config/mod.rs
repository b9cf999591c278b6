//! Typed configuration: every default in one place ([`Config::default`]),
//! loaded from an optional TOML file, then `STEVEDORE_*` environment
//! variables, then command-line flags, and validated before anything starts.
//!
//! The one list of keys is [`Config`]'s fields. serde derives the reading
//! (`deny_unknown_fields`; a key left out keeps its default); the
//! environment and the flags are laid over the file's table as text before
//! it is read (`load.rs`), and every field's reader (`de.rs`) takes the
//! text form as well as the TOML one, so a key means the same thing and is
//! parsed the same way wherever it comes from. Every error names the key,
//! and none repeats a secret (`master_key`, `tokens`, proxy credentials).
//!
//! This module is a leaf: it imports nothing from the rest of the crate.
//! The types it parses (networks, proxies, tokens, tenant names, the master
//! key, the log's recovery mode) are defined here, and the modules that use
//! them import them from here.

mod cluster;
mod de;
mod kinds;
mod load;
mod master_key;
mod net;
pub mod proxy;
pub mod tenants;
#[cfg(test)]
mod tests;
pub mod tokens;
mod validate;

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use serde::Deserialize;

pub use cluster::{Backend, NatsUrl, Secret, SecretFile};
pub use kinds::{LogFormat, Recovery};
pub use load::{keys, ENV_PREFIX, NON_CONFIG_ENV};
pub use master_key::{MasterKey, MASTER_KEY_BYTES};
pub use net::{parse_networks, Cidr};
pub use proxy::ProxyUrl;
pub use tokens::{Role, Token};

/// The config key of the state store's page-cache size; named after the
/// engine that has it (the `state_cache_bytes` field is read from it).
pub const STATE_CACHE_KEY: &str = "sled_cache_bytes";

/// The broker's configuration. Field docs are the reference for README's
/// table; a field's key is its name (except [`STATE_CACHE_KEY`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    #[serde(deserialize_with = "de::parsed")]
    pub listen: SocketAddr,
    /// Prometheus metrics listen address (`off` disables the listener).
    #[serde(deserialize_with = "de::addr_or_off")]
    pub metrics_listen: Option<SocketAddr>,
    // Console (#16): the webhook maintenance page.
    /// Console (webhook maintenance page) listen address (`off` disables it).
    #[serde(deserialize_with = "de::addr_or_off")]
    pub console_listen: Option<SocketAddr>,
    /// The data directory: the event log and the state store.
    #[serde(deserialize_with = "de::data_dir")]
    pub data_dir: PathBuf,
    /// The state store's page cache in bytes (config key
    /// [`STATE_CACHE_KEY`], named after the engine that has it).
    #[serde(rename = "sled_cache_bytes", deserialize_with = "de::number")]
    pub state_cache_bytes: u64,
    /// Size at which the event log starts a new segment file.
    #[serde(deserialize_with = "de::number")]
    pub log_segment_bytes: u64,
    /// Largest encoded event accepted by Publish.
    #[serde(deserialize_with = "de::number")]
    pub max_event_bytes: usize,
    /// Most events in one PublishBatch.
    #[serde(deserialize_with = "de::number")]
    pub max_batch_events: usize,
    /// Largest gRPC request message the server decodes.
    #[serde(deserialize_with = "de::number")]
    pub max_request_bytes: usize,
    /// Most write operations folded into one group commit (one fsync).
    #[serde(deserialize_with = "de::number")]
    pub max_group_commit: usize,
    /// How long an event-log commit of few events waits for more while the
    /// runtime is saturated; zero commits at once always.
    #[serde(with = "humantime_serde")]
    pub group_commit_delay: Duration,
    /// The stall log: an event slower than this from publish to webhook
    /// answer is logged with where its time went; zero is off.
    #[serde(with = "humantime_serde")]
    pub stall_threshold: Duration,
    /// What opening the event log does with damaged acknowledged records:
    /// refuse to start (default) or cut the log there (`truncate`).
    #[serde(deserialize_with = "de::parsed")]
    pub recovery: Recovery,
    /// Zero the active log segment ahead of the writer, so commits
    /// overwrite blocks instead of growing the file.
    #[serde(deserialize_with = "de::flag")]
    pub log_zero_fill: bool,
    /// Ack wait when a Subscribe request sets none.
    #[serde(with = "humantime_serde")]
    pub default_ack_wait: Duration,
    /// Longest ack wait a Subscribe request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ack_wait: Duration,
    /// `max_in_flight` when a Subscribe request sets 0.
    #[serde(deserialize_with = "de::number")]
    pub default_max_in_flight: NonZeroU32,
    /// Largest `max_in_flight` a Subscribe request may ask for.
    #[serde(deserialize_with = "de::number")]
    pub max_in_flight_limit: NonZeroU32,
    /// How long a graceful shutdown may take before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Log format: `text` or `json`.
    #[serde(deserialize_with = "de::parsed")]
    pub log_format: LogFormat,
    /// Accept `http://` webhook URLs (otherwise HTTPS only).
    #[serde(deserialize_with = "de::flag")]
    pub allow_http: bool,
    /// Networks exempt from the webhook SSRF guard (which otherwise blocks
    /// loopback, private, link-local, metadata, ... addresses).
    #[serde(deserialize_with = "de::networks")]
    pub allow_networks: Vec<Cidr>,
    /// Most webhook endpoints.
    #[serde(deserialize_with = "de::number")]
    pub max_endpoints: usize,
    /// An endpoint's `max_in_flight` when it sets 0.
    #[serde(deserialize_with = "de::number")]
    pub endpoint_max_in_flight: NonZeroU32,
    /// Largest `max_in_flight` an endpoint may ask for.
    #[serde(deserialize_with = "de::number")]
    pub endpoint_max_in_flight_limit: NonZeroU32,
    /// Events an endpoint's worker holds at once (sending, waiting for a
    /// retry, or queued behind their ordering key).
    #[serde(deserialize_with = "de::number")]
    pub delivery_window: NonZeroU32,
    /// Recently read events kept decoded with their rendered bodies, shared
    /// by every endpoint's worker (so ten endpoints read, decode and render
    /// an event once, not ten times); 0 turns the sharing off.
    #[serde(deserialize_with = "de::number")]
    pub shared_events: u32,
    /// Per-attempt timeout when an endpoint sets none.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// The same, for `channel_inventory.updated` (its receivers answer
    /// within 5 s).
    #[serde(with = "humantime_serde")]
    pub channel_inventory_timeout: Duration,
    /// Longest per-attempt timeout an endpoint may set.
    #[serde(with = "humantime_serde")]
    pub max_webhook_timeout: Duration,
    /// Delays before each attempt when an endpoint sets none.
    #[serde(deserialize_with = "de::durations")]
    pub retry_schedule: Vec<Duration>,
    /// Random spread applied to each scheduled delay, in percent (±).
    #[serde(deserialize_with = "de::number")]
    pub retry_jitter_percent: u8,
    /// Longest `Retry-After` honoured; longer values are clamped to it.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// How long a rotated-out secret keeps signing when the request sets no
    /// grace period.
    #[serde(with = "humantime_serde")]
    pub secret_rotation_grace: Duration,
    /// An endpoint failing this long with no success is disabled.
    #[serde(with = "humantime_serde")]
    pub auto_disable_after: Duration,
    /// A delivery's `stevedore.delivery.failing` event is published after
    /// this many failed attempts.
    #[serde(deserialize_with = "de::number")]
    pub failing_event_after: u32,
    /// Events older than this are removed from the log.
    #[serde(with = "humantime_serde")]
    pub retention_age: Duration,
    /// When the data directory grows beyond this many bytes, the oldest
    /// events are removed (0: no size limit).
    #[serde(deserialize_with = "de::number")]
    pub retention_max_bytes: u64,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// File holding the master key (base64 of 32 random bytes) that
    /// encrypts endpoint secrets at rest; read when the key is set.
    #[serde(deserialize_with = "de::path")]
    pub master_key_file: Option<PathBuf>,
    /// The master key, from `master_key_file` or `master_key` (meant for
    /// `STEVEDORE_MASTER_KEY`). `None`: secrets are stored unencrypted.
    #[serde(deserialize_with = "de::master_key")]
    pub master_key: Option<MasterKey>,
    /// Bearer tokens (name, role, SHA-256). None: authentication is off and
    /// the listener must be loopback.
    #[serde(deserialize_with = "de::tokens")]
    pub tokens: Vec<Token>,
    /// PEM certificate chain for the gRPC listener (with `tls_key`).
    #[serde(deserialize_with = "de::path")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the gRPC listener (with `tls_cert`).
    #[serde(deserialize_with = "de::path")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificates trusted for HTTPS webhook receivers, besides the
    /// Mozilla roots (receivers behind a private CA).
    #[serde(deserialize_with = "de::path")]
    pub webhook_ca_file: Option<PathBuf>,
    // #19 egress: proxies.
    /// Proxy for `http://` receivers (`http://[user:password@]host:port`;
    /// the credentials are secret: never logged or repeated in errors);
    /// `Some("")`: none, even if `HTTP_PROXY` is set. `None` after
    /// loading: no proxy.
    #[serde(deserialize_with = "de::proxy")]
    pub http_proxy: Option<ProxyUrl>,
    /// Proxy for `https://` receivers (CONNECT); as `http_proxy`.
    #[serde(deserialize_with = "de::proxy")]
    pub https_proxy: Option<ProxyUrl>,
    /// Hosts, addresses and CIDR ranges reached directly.
    #[serde(deserialize_with = "de::no_proxy")]
    pub no_proxy: Vec<String>,
    /// Open `Subscribe` streams, over all connections (a budget of their
    /// own: subscribers cannot take the publishers' slots).
    #[serde(deserialize_with = "de::number")]
    pub max_subscribe_streams: usize,
    /// Open `PublishStream` streams, over all connections.
    #[serde(deserialize_with = "de::number")]
    pub max_publish_streams: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: calls in progress on one
    /// connection.
    #[serde(deserialize_with = "de::number")]
    pub max_streams_per_connection: u32,
    /// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`: the largest request metadata
    /// (headers) accepted.
    #[serde(deserialize_with = "de::number")]
    pub max_metadata_bytes: u32,
    /// Request bytes held at once by all calls in progress: each message's
    /// encoded bytes (from its length prefix) plus its estimated decoded
    /// size. Past it, calls are refused with `RESOURCE_EXHAUSTED`.
    #[serde(deserialize_with = "de::number")]
    pub max_inflight_request_bytes: usize,
    /// Largest estimated decoded size of one request message, measured on
    /// the wire bytes before decoding.
    #[serde(deserialize_with = "de::number")]
    pub max_decoded_request_bytes: usize,
    /// Time a new gRPC connection has to send its first request.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A gRPC connection with no call in progress and no traffic for this
    /// long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open gRPC connections; more are closed as soon as accepted.
    #[serde(deserialize_with = "de::number")]
    pub max_connections: usize,
    /// Most custom headers on one webhook endpoint.
    #[serde(deserialize_with = "de::number")]
    pub max_endpoint_headers: usize,
    /// Longest custom header value on a webhook endpoint.
    #[serde(deserialize_with = "de::number")]
    pub max_endpoint_header_bytes: usize,

    // tenants (see `crate::tenant`)
    /// The known tenants; an event, endpoint or token naming another is
    /// refused. Empty: any tenant.
    #[serde(deserialize_with = "de::tenants")]
    pub tenants: Vec<String>,
    /// Most endpoints one tenant may have (0: only `max_endpoints` applies).
    #[serde(deserialize_with = "de::number")]
    pub tenant_max_endpoints: usize,
    /// Events per second one tenant may publish (token bucket; 0: no limit).
    #[serde(deserialize_with = "de::number")]
    pub tenant_publish_rate: f64,
    /// The bucket's size: events a tenant may publish at once (0: one
    /// second's worth of `tenant_publish_rate`, at least 1).
    #[serde(deserialize_with = "de::number")]
    pub tenant_publish_burst: u32,
    /// Publish every audit record as a `stevedore.admin.changed` event.
    #[serde(deserialize_with = "de::flag")]
    pub audit_events: bool,
    /// Per-tenant retention ages shorter than `retention_age`: a listed
    /// tenant's events older than its age lose their payload (see
    /// `crate::retention`).
    #[serde(deserialize_with = "de::tenant_retention")]
    pub tenant_retention: Vec<(String, Duration)>,

    // Cluster mode (#15; `cluster.rs`).
    /// Where events live: `embedded` (`data_dir`) or `jetstream`.
    #[serde(deserialize_with = "de::parsed")]
    pub backend: Backend,
    /// NATS seed URLs, comma-separated (may hold credentials: never echoed).
    #[serde(deserialize_with = "de::nats_urls")]
    pub nats_url: Vec<NatsUrl>,
    /// NATS user name (with `nats_password`).
    #[serde(deserialize_with = "de::optional")]
    pub nats_user: Option<String>,
    /// NATS password (secret).
    #[serde(deserialize_with = "de::secret")]
    pub nats_password: Option<Secret>,
    /// NATS authentication token (secret).
    #[serde(deserialize_with = "de::secret")]
    pub nats_token: Option<Secret>,
    /// File holding an NKey user seed (`SU...`; the seed is secret).
    #[serde(deserialize_with = "de::nkey_seed_file")]
    pub nats_nkey_seed_file: Option<SecretFile>,
    /// NATS credentials file: a user JWT and its NKey seed (secret).
    #[serde(deserialize_with = "de::creds_file")]
    pub nats_creds_file: Option<SecretFile>,
    /// PEM CA certificates trusted for the NATS servers' TLS.
    #[serde(deserialize_with = "de::path")]
    pub nats_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for NATS (with `nats_tls_key`).
    #[serde(deserialize_with = "de::path")]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM client key for NATS (with `nats_tls_cert`).
    #[serde(deserialize_with = "de::path")]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse a NATS connection without TLS.
    #[serde(deserialize_with = "de::flag")]
    pub nats_require_tls: bool,
    /// Names the stream (`<PREFIX>_EVENTS`) and buckets on the cluster.
    #[serde(deserialize_with = "de::nats_prefix")]
    pub nats_prefix: String,
    /// Copies of every event and bucket entry (1 to 5).
    #[serde(deserialize_with = "de::number")]
    pub nats_replicas: usize,
    /// Every node's monitoring URL, for the durability check.
    #[serde(deserialize_with = "de::monitor_urls")]
    pub nats_monitor_url: Vec<String>,
    /// Start even when the durability check fails (logged loudly).
    #[serde(deserialize_with = "de::flag")]
    pub allow_unsynced_cluster: bool,
    /// The URL other brokers reach this one's gRPC service at (default:
    /// `http(s)://<listen address>`); the leases it holds name it.
    #[serde(deserialize_with = "de::advertise_url")]
    pub advertise_url: Option<String>,
    /// PEM CA certificates trusted for other brokers' TLS, when a call is
    /// forwarded to one (default: the public web roots).
    #[serde(deserialize_with = "de::path")]
    pub peer_ca_file: Option<PathBuf>,
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
            stall_threshold: Duration::ZERO,
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
            backend: Backend::Embedded,
            nats_url: Vec::new(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_nkey_seed_file: None,
            nats_creds_file: None,
            nats_tls_ca_file: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_require_tls: false,
            nats_prefix: "stevedore".to_owned(),
            nats_replicas: 3,
            nats_monitor_url: Vec::new(),
            allow_unsynced_cluster: false,
            advertise_url: None,
            peer_ca_file: None,
        }
    }
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

/// Parses a duration as every duration key does (humantime's grammar, as
/// `humantime-serde` reads the keys): `500us`, `250ms`, `30s`, `5m`, `2h`,
/// `1d`, or several together (`1h 30m`); a number needs a unit.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        format!("{e} (expected a whole number and a unit, e.g. 250ms, 30s, 5m, 2h or 1d)")
    })
}

impl Config {
    /// Whether TLS is configured for the gRPC listener.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }
}
