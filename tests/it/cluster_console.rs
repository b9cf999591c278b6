//! The console in cluster mode: two broker processes on a real 3-node
//! nats-server cluster, each serving its console. An endpoint created
//! through one broker's console is served by the other broker (gRPC and
//! console alike), and deleting it through the other broker's console
//! removes it for both. With tokens, a console session's call that runs
//! on the other broker (a replay of an endpoint the other delivers, the
//! endpoint's figures) is forwarded there with the session's token.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::time::Duration;

use stevedore::pb::{self, admin_client::AdminClient};
use tonic::Code;

use crate::support::{
    connect,
    console::{self, Client},
    leases::deliverer_of,
    nats::NatsCluster,
    Server,
};

/// Loopback receivers over plain HTTP, and a console on a free port.
const ENV: [(&str, &str); 3] = [
    ("STEVEDORE_ALLOW_HTTP", "true"),
    ("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8"),
    ("STEVEDORE_CONSOLE_LISTEN", "127.0.0.1:0"),
];

/// A logged-in console client of `broker` (authentication is off: the
/// one-time link it printed).
async fn console_of(broker: &Server) -> Client {
    let url = broker.stdout_after("stevedore console on ").await;
    let link = broker
        .stdout_after("stevedore console one-time login ")
        .await;
    let path = link
        .strip_prefix(url.as_str())
        .and_then(|rest| rest.split(' ').next())
        .expect("the link is on the console's URL")
        .to_owned();
    let mut client = Client::at(&url);
    let page = client.follow_login(&path).await;
    assert!(client.cookie.is_some(), "{}", page.body);
    client
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_console_on_either_broker_manages_the_same_endpoints() {
    let cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = cluster.start_broker(dir.path(), 1, "con", &ENV).await;
    let b = cluster.start_broker(dir.path(), 2, "con", &ENV).await;
    let a = a.unwrap_or_else(|e| panic!("broker A: {e}"));
    let b = b.unwrap_or_else(|e| panic!("broker B: {e}"));
    let (on_a, on_b) = (console_of(&a).await, console_of(&b).await);

    let (id, _) = console::create(&on_a, "http://127.0.0.1:9/hook", &[]).await;
    let mut admin_b = AdminClient::new(connect(&b.addr).await.unwrap());
    // B's copy of the state has it a moment after A answered (the README:
    // another broker's copy follows within a moment).
    let mut got = None;
    for _ in 0..50 {
        match admin_b
            .get_endpoint(pb::GetEndpointRequest { id: id.clone() })
            .await
        {
            Ok(r) => {
                got = Some(r.into_inner());
                break;
            }
            Err(s) if s.code() == Code::NotFound => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("GetEndpoint on B: {s:?}"),
        }
    }
    let got = got.expect("B serves the endpoint A's console created, within 5 s");
    assert_eq!(got.endpoint.unwrap().url, "http://127.0.0.1:9/hook");
    let page = on_b.get(&format!("/endpoints/{id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("http://127.0.0.1:9/hook"),
        "{}",
        page.body
    );

    // Deleted through B's console: gone for A too, once A's copy has it.
    let csrf = page.csrf();
    let deleted = on_b
        .post(
            &format!("/endpoints/{id}/action"),
            &[("csrf", &csrf), ("op", "delete"), ("confirm", &id)],
        )
        .await;
    assert!(deleted.status < 400, "{}", deleted.body);
    let mut admin_a = AdminClient::new(connect(&a.addr).await.unwrap());
    for _ in 0..50 {
        match admin_a
            .get_endpoint(pb::GetEndpointRequest { id: id.clone() })
            .await
        {
            Err(s) if s.code() == Code::NotFound => return,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("endpoint {id} still on A after B's console deleted it");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_console_session_calls_run_on_the_broker_that_delivers() {
    const TOKEN: &str = "console-t0ken-of-ops";
    let tokens = format!(
        "ops:admin:{}",
        stevedore::config::tokens::to_hex(&stevedore::config::tokens::hash_token(TOKEN.as_bytes()))
    );
    let mut env = ENV.to_vec();
    env.push(("STEVEDORE_TOKENS", &tokens));
    let cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = cluster.start_broker(dir.path(), 1, "conf", &env).await;
    let b = cluster.start_broker(dir.path(), 2, "conf", &env).await;
    let brokers = [
        a.unwrap_or_else(|e| panic!("broker A: {e}")),
        b.unwrap_or_else(|e| panic!("broker B: {e}")),
    ];
    let url = brokers[1].stdout_after("stevedore console on ").await;
    let mut on_b = Client::at(&url);
    let login = on_b.login(TOKEN).await;
    assert!(on_b.cookie.is_some(), "{}", login.body);

    // Endpoints through B's console until A delivers one (each broker
    // delivers about half of them).
    let mut on_a = None;
    for i in 0..40 {
        let hook = format!("http://127.0.0.1:9/hook-{i}");
        let (id, _) = console::create(&on_b, &hook, &[]).await;
        if deliverer_of(&cluster, "conf", &brokers, &id).await == 0 {
            on_a = Some(id);
            break;
        }
    }
    let id = on_a.expect("A delivers none of 40 endpoints");

    // A replay through B's console runs on A.
    let page = on_b.get(&format!("/endpoints/{id}")).await;
    let replay = on_b
        .post(
            &format!("/endpoints/{id}/action"),
            &[
                ("csrf", &page.csrf()),
                ("op", "replay"),
                ("from", "1"),
                ("confirm", &id),
            ],
        )
        .await;
    assert!(
        replay.status < 400 && replay.body.contains("replaying from offset 1"),
        "{}",
        replay.body
    );
    // The overview shows its figures (GetEndpointStats, on A) too.
    let overview = on_b.get("/").await;
    assert!(
        overview.body.contains(&id) && !overview.body.contains("FailedPrecondition"),
        "{}",
        overview.body
    );
}
