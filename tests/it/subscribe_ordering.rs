//! Ordering by key for durable gRPC consumers (`SubscribeRequest.ordering`):
//! with ORDERING_KEY a second event of a key is not handed out until the
//! first is acked while other keys flow; ORDERING_STRICT hands out one at
//! a time; ORDERING_NONE (and unspecified) hands out as the window allows.

use stevedore::pb::{
    subscribe_request::Start, AckMode, AckRequest, NackRequest, Ordering, SubscribeRequest,
};

use crate::support::{assert_invalid, assert_quiet, next_within, pick, publish, TestServer};

/// A durable consumer `name` from the earliest event, ten in flight.
fn ordered(name: &str, ordering: Ordering) -> SubscribeRequest {
    SubscribeRequest {
        consumer: name.into(),
        start: Some(Start::Earliest(true)),
        max_in_flight: 10,
        ack_mode: AckMode::Explicit as i32,
        ordering: ordering as i32,
        ..Default::default()
    }
}

fn ack(consumer: &str, offsets: &[u64]) -> AckRequest {
    AckRequest {
        consumer: consumer.into(),
        offsets: offsets.to_vec(),
    }
}

/// Publishes a pick confirmation per order id (the ordering key is the
/// sales order id), in order; returns their offsets.
async fn publish_orders(server: &TestServer, orders: &[&str]) -> Vec<u64> {
    let mut p = server.publisher().await;
    let mut offsets = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        offsets.push(publish(&mut p, pick(&format!("e{i}"), order)).await);
    }
    offsets
}

#[tokio::test]
async fn by_key_the_next_of_a_key_waits_for_the_ack_while_other_keys_flow() {
    let server = TestServer::start().await;
    let o = publish_orders(&server, &["SO1", "SO1", "SO2", "SO2", "SO3"]).await;
    let mut s = server.subscriber().await;
    let mut a = s
        .subscribe(ordered("keyed", Ordering::Key))
        .await
        .unwrap()
        .into_inner();
    // The first of each key, in log order.
    let first: Vec<u64> = [
        next_within(&mut a, 5).await,
        next_within(&mut a, 5).await,
        next_within(&mut a, 5).await,
    ]
    .iter()
    .map(|m| m.offset)
    .collect();
    assert_eq!(first, [o[0], o[2], o[4]]);
    assert_quiet(&mut a, 300).await;

    // A second stream on the consumer gets nothing of SO1 or SO2 either.
    let mut b = s
        .subscribe(ordered("keyed", Ordering::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_quiet(&mut b, 300).await;

    // Acking SO2's first lets its second go (to either stream); SO1 still
    // waits.
    s.ack(ack("keyed", &[o[2]])).await.unwrap();
    let next = tokio::select! {
        m = next_within(&mut a, 5) => m,
        m = next_within(&mut b, 5) => m,
    };
    assert_eq!((next.offset, next.delivery_attempt), (o[3], 1));
    assert_eq!(next.event.unwrap().ordering_key, "SO2");
    assert_quiet(&mut a, 200).await;
    assert_quiet(&mut b, 200).await;

    s.ack(ack("keyed", &[o[0]])).await.unwrap();
    let next = tokio::select! {
        m = next_within(&mut a, 5) => m,
        m = next_within(&mut b, 5) => m,
    };
    assert_eq!((next.offset, next.delivery_attempt), (o[1], 1));
}

#[tokio::test]
async fn a_nacked_message_keeps_its_key_until_acked() {
    let server = TestServer::start().await;
    let o = publish_orders(&server, &["SO1", "SO1"]).await;
    let mut s = server.subscriber().await;
    let mut stream = s
        .subscribe(ordered("nacked", Ordering::Key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_within(&mut stream, 5).await.offset, o[0]);
    s.nack(NackRequest {
        consumer: "nacked".into(),
        offsets: vec![o[0]],
        delay: None,
    })
    .await
    .unwrap();
    // Redelivered, before the next of its key.
    let again = next_within(&mut stream, 5).await;
    assert_eq!((again.offset, again.delivery_attempt), (o[0], 2));
    assert_quiet(&mut stream, 300).await;
    s.ack(ack("nacked", &[o[0]])).await.unwrap();
    assert_eq!(next_within(&mut stream, 5).await.offset, o[1]);
}

#[tokio::test]
async fn strict_hands_out_one_message_at_a_time() {
    let server = TestServer::start().await;
    let o = publish_orders(&server, &["SO1", "SO2", "SO3"]).await;
    let mut s = server.subscriber().await;
    let mut stream = s
        .subscribe(ordered("strict", Ordering::Strict))
        .await
        .unwrap()
        .into_inner();
    for &offset in &o {
        assert_eq!(next_within(&mut stream, 5).await.offset, offset);
        assert_quiet(&mut stream, 300).await;
        s.ack(ack("strict", &[offset])).await.unwrap();
    }
}

#[tokio::test]
async fn none_hands_out_as_the_window_allows() {
    let server = TestServer::start().await;
    let o = publish_orders(&server, &["SO1", "SO1", "SO1"]).await;
    let mut s = server.subscriber().await;
    for (name, ordering) in [("none", Ordering::None), ("default", Ordering::Unspecified)] {
        let mut stream = s
            .subscribe(ordered(name, ordering))
            .await
            .unwrap()
            .into_inner();
        for &offset in &o {
            assert_eq!(next_within(&mut stream, 5).await.offset, offset);
        }
    }
}

/// The ordering is the consumer's, kept across restarts: another one is
/// refused, unspecified keeps it; plain subscriptions take none.
#[tokio::test]
async fn the_ordering_is_the_consumers_and_survives_a_restart() {
    let server = TestServer::start().await;
    let o = publish_orders(&server, &["SO1", "SO1"]).await;
    let mut s = server.subscriber().await;
    let stream = s
        .subscribe(ordered("kept", Ordering::Key))
        .await
        .unwrap()
        .into_inner();
    drop(stream);
    let refused = s
        .subscribe(ordered("kept", Ordering::Strict))
        .await
        .expect_err("another ordering is refused");
    assert_invalid(refused, "ordering");
    let plain = SubscribeRequest {
        ordering: Ordering::Key as i32,
        ..Default::default()
    };
    assert_invalid(s.subscribe(plain).await.expect_err("refused"), "ordering");

    let server = server.restart().await;
    let mut s = server.subscriber().await;
    let mut stream = s
        .subscribe(ordered("kept", Ordering::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_within(&mut stream, 5).await.offset, o[0]);
    assert_quiet(&mut stream, 300).await;
    s.ack(ack("kept", &[o[0]])).await.unwrap();
    assert_eq!(next_within(&mut stream, 5).await.offset, o[1]);
}
