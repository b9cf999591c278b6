//! Integration tests: the real broker on `127.0.0.1:0`, real tonic clients.
//!
//! What the files share is in [`support`]: the broker in this process or as
//! a child process, the webhook receiver, event builders and gRPC helpers.
//! The crash and load scenarios (`crash`, `crash_delivery`, `reliability`)
//! and the bad-input sweep (`sweep`) are directories: the test and its run
//! in `mod.rs`, the parts of its harness beside it.

mod admin_api;
mod amplification;
mod auth;
mod cluster_broker_faults;
mod cluster_brokers;
mod cluster_console;
mod cluster_consumers;
mod cluster_delivery;
mod cluster_erasure;
mod cluster_failover;
mod cluster_handover;
mod cluster_idempotency;
mod cluster_leaderless;
mod cluster_lease;
mod cluster_log;
mod cluster_migrate;
mod cluster_preflight;
mod cluster_retention;
mod connections;
mod console;
mod console_ops;
mod console_pages;
mod crash;
mod crash_delivery;
mod egress;
mod erasure;
mod etiquette;
mod faults;
mod fuzz;
mod hardening;
mod metrics_exposition;
mod mtls;
mod never_matches;
mod oauth;
mod operations;
mod proxy;
mod publish;
mod receiver;
mod reliability;
mod secrets;
mod service;
mod stall_log;
mod startup;
#[cfg(target_os = "linux")] // prlimit
mod state_heal;
mod subscribe;
mod subscribe_ordering;
mod support;
mod sweep;
mod tenants;
mod webhook;
