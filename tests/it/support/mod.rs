//! What every test file shares: the broker in this process
//! ([`server`]) or as a child process ([`process`]), the programmable
//! webhook receiver ([`receiver`], [`signatures`]), event builders
//! ([`events`]), gRPC helpers ([`client`], [`endpoints`], [`raw_grpc`]),
//! the load of the crash tests ([`publishing`], [`answers`], [`rng`]),
//! hostile input ([`hostile`]), `/metrics` scrapes ([`metrics`]), an OAuth2 partner ([`oauth_partner`]), the
//! console's HTTP client ([`console`]), two tenants ([`tenants`]), the
//! data directory's files ([`files`]) and a real nats-server cluster for the
//! cluster suite ([`nats`]).
//!
//! The helpers every area uses are re-exported here, so a test file says
//! `use crate::support::{pick, publish, TestServer};`.

#![allow(dead_code)] // each test file uses a different part of it

pub mod answers;
pub mod client;
pub mod console;
pub mod endpoints;
pub mod events;
pub mod files;
pub mod hostile;
pub mod leases;
pub mod ledger;
pub mod metrics;
pub mod nats;
pub mod nats_auth;
pub mod oauth_partner;
pub mod process;
pub mod publishing;
pub mod raw_grpc;
pub mod receiver;
pub mod rng;
pub mod server;
pub mod signatures;
pub mod tenants;

pub use answers::Answer;
pub use client::{
    assert_invalid, assert_quiet, list_consumers, next_within, publish, publish_answer,
    subscribe_earliest,
};
pub use endpoints::{
    attempts, attempts_within, count_by_state, create, deliveries, endpoint, get_endpoint,
    https_receiver, https_receiver_with, list_deliveries, wait_state,
};
pub use events::{inventory, ms, number, pick, string};
pub use files::{contains, copy_dir, files_containing, stored_records, walk};
pub use ledger::Ledger;
pub use process::{
    all_stderr, broker_panics, connect, connect_tls, failure_text, read_stderr,
    start_server_with_env, Server,
};
pub use publishing::{log_has_event, mode_name, publish_in_mode, status_text, Mode};
pub use raw_grpc::{frame, percent_decode, percent_decode_bytes};
pub use receiver::{Behavior, Receiver, Recorded, HALF_WRITTEN_MISSING, HOOK_PATH};
pub use rng::{seed, Rng};
pub use server::{
    client_certificate, data_path, self_signed, test_tokens, Authed, Bearer, MetricsBroker,
    TestServer,
};
pub use signatures::{sign, signatures, verify_signature};
