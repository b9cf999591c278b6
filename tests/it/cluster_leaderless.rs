//! An append while the stream has no leader: the request reaches no server
//! ("no responders"), nothing is stored, and the log sends it again until
//! a leader answers, within its bound (about 5 s). Here the stream is
//! deleted and made again a second later: the append issued in between
//! lands at offset 1 of the new stream, once.
//!
//! Without the resend, the append fails at once with "no responders" (seen
//! before the fix, and in CI as a flaky first publish after a stream was
//! created under load).

use std::time::Duration;

use stevedore::{
    model::Offset,
    store::jetstream::{EventStream, StreamConfig},
};

use crate::{
    cluster_log::new_event,
    support::{
        nats::{jetstream_of, patiently, NatsCluster},
        pick,
    },
};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_append_without_a_stream_leader_waits_for_one() {
    let cluster = NatsCluster::start().await;
    let client = cluster.connect().await;
    let config = StreamConfig::with_prefix("t9");
    let log = patiently(|| EventStream::open(client.clone(), config.clone()))
        .await
        .expect("open");
    let js = jetstream_of(&client);
    let stream = js.get_stream(&config.stream).await.unwrap();
    let wanted = stream.cached_info().config.clone();
    js.delete_stream(&config.stream).await.unwrap();

    let remake = tokio::spawn({
        let js = js.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            js.create_stream(wanted).await.unwrap();
        }
    });
    let appended = log
        .append(&new_event(pick("leaderless-1", "SO-1"), "SO-1"))
        .await
        .expect("the append waits for the new stream's leader");
    remake.await.unwrap();
    assert_eq!(appended.offset, Offset::new(1));
    assert!(!appended.duplicate);
    assert_eq!(log.head().await.unwrap(), Offset::new(1), "stored once");
}
