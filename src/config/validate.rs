//! Validation: combinations of keys that would fail later are refused at
//! load, naming the key (STYLE: "invalid combinations rejected at load,
//! never a panic later").

use std::{net::SocketAddr, time::Duration};

use anyhow::{anyhow, bail};

use super::{
    Config, MAX_GROUP_COMMIT_DELAY, MAX_RETRY_ATTEMPTS, MAX_RETRY_DELAY, MIN_ACK_WAIT,
    MIN_WEBHOOK_TIMEOUT, STATE_CACHE_KEY,
};

impl Config {
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
            STATE_CACHE_KEY,
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
        // Before cluster mode's keys: serving beyond loopback without
        // tokens is refused whatever else is set.
        self.check_listen(self.listen)?;
        self.validate_cluster()
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
}
