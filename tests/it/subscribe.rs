//! Subscriber: start positions, filters, live tail, durable consumers with
//! acks, redelivery, flow control, competing streams, restarts.

use std::time::Duration;

use stevedore::pb::{subscribe_request::Start, AckMode, AckRequest, NackRequest, SubscribeRequest};

use crate::support::{
    assert_invalid, assert_quiet, inventory, next_within, pick, publish, TestServer,
};

fn from(start: Start) -> SubscribeRequest {
    SubscribeRequest {
        start: Some(start),
        ..Default::default()
    }
}

fn durable(name: &str, max_in_flight: u32, ack_wait_ms: u64) -> SubscribeRequest {
    SubscribeRequest {
        consumer: name.into(),
        start: Some(Start::Earliest(true)),
        max_in_flight,
        ack_mode: AckMode::Explicit as i32,
        ack_wait: Some(prost_types::Duration {
            seconds: (ack_wait_ms / 1000) as i64,
            nanos: ((ack_wait_ms % 1000) * 1_000_000) as i32,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn start_positions_and_live_tail() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    for i in 1..=3 {
        publish(&mut p, pick(&format!("e{i}"), "SO")).await;
    }

    let mut earliest = s
        .subscribe(from(Start::Earliest(true)))
        .await
        .unwrap()
        .into_inner();
    let mut latest = s
        .subscribe(from(Start::Latest(true)))
        .await
        .unwrap()
        .into_inner();
    let mut default = s
        .subscribe(SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut at_two = s
        .subscribe(from(Start::Offset(2)))
        .await
        .unwrap()
        .into_inner();
    for want in 1..=3 {
        let m = next_within(&mut earliest, 5).await;
        assert_eq!((m.offset, m.delivery_attempt), (want, 1));
        assert_eq!(m.event.unwrap().id, format!("e{want}"));
    }
    assert_eq!(next_within(&mut at_two, 5).await.offset, 2);
    assert_eq!(next_within(&mut at_two, 5).await.offset, 3);

    // Live: a new event is pushed to every open stream. It is also the
    // marker for `latest`: its first message must be offset 4, so none of
    // the events before it was sent.
    publish(&mut p, pick("e4", "SO")).await;
    for stream in [&mut earliest, &mut latest, &mut default, &mut at_two] {
        let m = next_within(stream, 5).await;
        assert_eq!(m.offset, 4);
        assert_eq!(m.event_type, "pick.confirmed");
    }
}

#[tokio::test]
async fn start_at_time() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    publish(&mut p, pick("old1", "SO")).await;
    publish(&mut p, pick("old2", "SO")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish(&mut p, pick("new1", "SO")).await;
    publish(&mut p, pick("new2", "SO")).await;

    let mut s = server.subscriber().await;
    let mut stream = s
        .subscribe(from(Start::Time(stevedore::convert::timestamp(cut))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_within(&mut stream, 5).await.event.unwrap().id, "new1");
    assert_eq!(next_within(&mut stream, 5).await.event.unwrap().id, "new2");

    // A time after everything starts at the head.
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    let mut at_head = s
        .subscribe(from(Start::Time(stevedore::convert::timestamp(later))))
        .await
        .unwrap()
        .into_inner();
    // A marker: the next message of both streams, so nothing else was
    // sent before it.
    publish(&mut p, pick("marker", "SO")).await;
    for stream in [&mut stream, &mut at_head] {
        assert_eq!(next_within(stream, 5).await.event.unwrap().id, "marker");
    }
}

#[tokio::test]
async fn event_type_filter() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    publish(&mut p, pick("p1", "SO")).await;
    publish(&mut p, inventory("i1", "SKU", 3.0)).await;
    publish(&mut p, pick("p2", "SO")).await;
    let mut s = server.subscriber().await;
    let mut stream = s
        .subscribe(SubscribeRequest {
            start: Some(Start::Earliest(true)),
            event_types: vec!["inventory.updated".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let m = next_within(&mut stream, 5).await;
    assert_eq!((m.offset, m.event_type.as_str()), (2, "inventory.updated"));
    // The next inventory update is the next message: p2 was not sent.
    publish(&mut p, inventory("marker", "SKU", 4.0)).await;
    assert_eq!(next_within(&mut stream, 5).await.offset, 4);

    assert_invalid(
        s.subscribe(SubscribeRequest {
            event_types: vec!["Inventory".into()],
            ..Default::default()
        })
        .await
        .unwrap_err(),
        "event_types[0]",
    );
}

#[tokio::test]
async fn bad_subscribe_requests() {
    let server = TestServer::start().await;
    let mut s = server.subscriber().await;
    let cases = [
        (
            SubscribeRequest {
                ack_mode: AckMode::Explicit as i32,
                ..Default::default()
            },
            "consumer",
        ),
        (
            SubscribeRequest {
                consumer: "has space".into(),
                ..Default::default()
            },
            "consumer",
        ),
        (
            SubscribeRequest {
                consumer: "c".into(),
                ack_mode: AckMode::None as i32,
                ..Default::default()
            },
            "consumer",
        ),
        (
            SubscribeRequest {
                max_in_flight: 5,
                ..Default::default()
            },
            "max_in_flight",
        ),
        (
            SubscribeRequest {
                ack_mode: 7,
                ..Default::default()
            },
            "ack_mode",
        ),
        (
            SubscribeRequest {
                consumer: "c".into(),
                max_in_flight: 1_000_000,
                ..Default::default()
            },
            "max_in_flight",
        ),
        (
            SubscribeRequest {
                consumer: "c".into(),
                ack_wait: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1000,
                }),
                ..Default::default()
            },
            "ack_wait",
        ),
        (
            SubscribeRequest {
                start: Some(Start::Time(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                })),
                ..Default::default()
            },
            "time",
        ),
    ];
    for (req, field) in cases {
        assert_invalid(s.subscribe(req).await.unwrap_err(), field);
    }
    // None of those created the consumer.
    let err = s
        .ack(AckRequest {
            consumer: "c".into(),
            offsets: vec![1],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn explicit_acks_and_redelivery_after_ack_wait() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    publish(&mut p, pick("a", "SO")).await;
    publish(&mut p, pick("b", "SO")).await;

    let mut stream = s
        .subscribe(durable("workers", 10, 300))
        .await
        .unwrap()
        .into_inner();
    let m1 = next_within(&mut stream, 5).await;
    let m2 = next_within(&mut stream, 5).await;
    assert_eq!((m1.offset, m1.delivery_attempt), (1, 1));
    assert_eq!((m2.offset, m2.delivery_attempt), (2, 1));
    s.ack(AckRequest {
        consumer: "workers".into(),
        offsets: vec![1],
    })
    .await
    .unwrap();
    // Offset 2 is not acked: it comes back after the ack wait.
    let again = next_within(&mut stream, 5).await;
    assert_eq!((again.offset, again.delivery_attempt), (2, 2));
    let third = next_within(&mut stream, 5).await;
    assert_eq!((third.offset, third.delivery_attempt), (2, 3));
    s.ack(AckRequest {
        consumer: "workers".into(),
        offsets: vec![2],
    })
    .await
    .unwrap();
    assert_quiet(&mut stream, 600).await;

    // Acking beyond the head is bad input.
    assert_invalid(
        s.ack(AckRequest {
            consumer: "workers".into(),
            offsets: vec![50],
        })
        .await
        .unwrap_err(),
        "offsets",
    );
}

#[tokio::test]
async fn nack_redelivers_after_delay() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    publish(&mut p, pick("a", "SO")).await;
    let mut stream = s
        .subscribe(durable("n", 10, 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_within(&mut stream, 5).await.offset, 1);
    let started = std::time::Instant::now();
    s.nack(NackRequest {
        consumer: "n".into(),
        offsets: vec![1],
        delay: Some(prost_types::Duration {
            seconds: 0,
            nanos: 300_000_000,
        }),
    })
    .await
    .unwrap();
    let m = next_within(&mut stream, 5).await;
    assert_eq!((m.offset, m.delivery_attempt), (1, 2));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "delay honoured"
    );

    // Without a delay: at once.
    s.nack(NackRequest {
        consumer: "n".into(),
        offsets: vec![1],
        delay: None,
    })
    .await
    .unwrap();
    assert_eq!(next_within(&mut stream, 5).await.delivery_attempt, 3);
}

#[tokio::test]
async fn max_in_flight_bounds_unacked_messages() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    for i in 0..5 {
        publish(&mut p, pick(&format!("e{i}"), "SO")).await;
    }
    let mut stream = s
        .subscribe(durable("fc", 2, 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_within(&mut stream, 5).await.offset, 1);
    assert_eq!(next_within(&mut stream, 5).await.offset, 2);
    assert_quiet(&mut stream, 300).await;
    s.ack(AckRequest {
        consumer: "fc".into(),
        offsets: vec![2],
    })
    .await
    .unwrap();
    assert_eq!(next_within(&mut stream, 5).await.offset, 3);
    assert_quiet(&mut stream, 300).await;
    s.ack(AckRequest {
        consumer: "fc".into(),
        offsets: vec![1, 3],
    })
    .await
    .unwrap();
    assert_eq!(next_within(&mut stream, 5).await.offset, 4);
    assert_eq!(next_within(&mut stream, 5).await.offset, 5);
}

#[tokio::test]
async fn competing_streams_share_a_consumer() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    let mut a = s
        .subscribe(durable("shared", 5, 30_000))
        .await
        .unwrap()
        .into_inner();
    let mut b = s
        .subscribe(durable("shared", 5, 30_000))
        .await
        .unwrap()
        .into_inner();
    for i in 0..10 {
        publish(&mut p, pick(&format!("e{i}"), "SO")).await;
    }
    // Each stream holds at most 5 unacked: together they get all 10, once.
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_within(&mut a, 5).await.offset);
        seen.push(next_within(&mut b, 5).await.offset);
    }
    assert_quiet(&mut a, 200).await;
    assert_quiet(&mut b, 50).await;
    seen.sort();
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());

    // Acked by both streams' owners: nothing is redelivered to anyone.
    s.ack(AckRequest {
        consumer: "shared".into(),
        offsets: seen,
    })
    .await
    .unwrap();
    let mut c = s
        .subscribe(durable("shared", 5, 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_quiet(&mut c, 200).await;
    assert_quiet(&mut a, 10).await;
}

#[tokio::test]
async fn closed_stream_hands_its_messages_to_another() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    for i in 0..3 {
        publish(&mut p, pick(&format!("e{i}"), "SO")).await;
    }
    let mut a = s
        .subscribe(durable("handoff", 3, 30_000))
        .await
        .unwrap()
        .into_inner();
    for want in 1..=3 {
        assert_eq!(next_within(&mut a, 5).await.offset, want);
    }
    let mut b = s
        .subscribe(durable("handoff", 3, 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_quiet(&mut b, 200).await;
    drop(a);
    let mut got: Vec<(u64, u32)> = Vec::new();
    for _ in 0..3 {
        let m = next_within(&mut b, 5).await;
        got.push((m.offset, m.delivery_attempt));
    }
    got.sort();
    assert_eq!(got, vec![(1, 2), (2, 2), (3, 2)]);
}

#[tokio::test]
async fn consumer_position_survives_restart() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    for i in 1..=5 {
        publish(&mut p, pick(&format!("e{i}"), "SO")).await;
    }
    let mut stream = s
        .subscribe(durable("durable", 10, 30_000))
        .await
        .unwrap()
        .into_inner();
    for want in 1..=5 {
        assert_eq!(next_within(&mut stream, 5).await.offset, want);
    }
    // Out of order: 1, 2 and 4 acked; 3 and 5 not.
    s.ack(AckRequest {
        consumer: "durable".into(),
        offsets: vec![4, 1, 2],
    })
    .await
    .unwrap();
    drop(stream);
    drop(s);
    drop(p);

    let server = server.restart().await;
    let mut p = server.publisher().await;
    publish(&mut p, pick("e6", "SO")).await;
    let mut s = server.subscriber().await;
    // The start position of an existing consumer is ignored.
    let mut req = durable("durable", 10, 30_000);
    req.start = Some(Start::Latest(true));
    let mut stream = s.subscribe(req).await.unwrap().into_inner();
    let got: Vec<u64> = vec![
        next_within(&mut stream, 5).await.offset,
        next_within(&mut stream, 5).await.offset,
        next_within(&mut stream, 5).await.offset,
    ];
    assert_eq!(got, vec![3, 5, 6]);
    // The acked ones are not sent again: the next message is a new event.
    publish(&mut p, pick("marker", "SO")).await;
    assert_eq!(next_within(&mut stream, 5).await.offset, 7);
}

#[tokio::test]
async fn durable_consumer_keeps_its_filter() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    publish(&mut p, pick("p1", "SO")).await;
    publish(&mut p, inventory("i1", "SKU", 1.0)).await;
    let mut req = durable("inv", 10, 30_000);
    req.event_types = vec!["inventory.updated".into()];
    let mut stream = s.subscribe(req).await.unwrap().into_inner();
    assert_eq!(next_within(&mut stream, 5).await.offset, 2);

    let mut other = durable("inv", 10, 30_000);
    other.event_types = vec!["pick.confirmed".into()];
    assert_invalid(s.subscribe(other).await.unwrap_err(), "event_types");
    // No filter given: the consumer's own applies.
    let mut second = s
        .subscribe(durable("inv", 10, 30_000))
        .await
        .unwrap()
        .into_inner();
    publish(&mut p, pick("p2", "SO")).await;
    publish(&mut p, inventory("i2", "SKU", 2.0)).await;
    let m = tokio::select! {
        m = next_within(&mut stream, 5) => m,
        m = next_within(&mut second, 5) => m,
    };
    assert_eq!(m.offset, 4);
}

/// Operators list, reset and delete durable consumers through Admin;
/// endpoints' own consumers are neither listed nor touched.
#[tokio::test]
async fn consumers_are_listed_reset_and_deleted() {
    use stevedore::pb::{
        reset_consumer_request::Position, DeleteConsumerRequest, ResetConsumerRequest,
    };

    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    let mut admin = server.admin().await;
    crate::support::create(
        &mut admin,
        crate::support::endpoint("https://example.com/hook"),
    )
    .await;
    for i in 1..=5 {
        publish(&mut p, pick(&format!("e{i}"), "SO")).await;
    }
    let mut stream = s
        .subscribe(durable("billing", 10, 30_000))
        .await
        .unwrap()
        .into_inner();
    for want in 1..=5 {
        assert_eq!(next_within(&mut stream, 5).await.offset, want);
    }
    s.ack(AckRequest {
        consumer: "billing".into(),
        offsets: vec![1, 2, 3],
    })
    .await
    .unwrap();
    drop(stream);

    let list = crate::support::list_consumers(&mut admin).await;
    let got: Vec<(&str, u64, u64)> = list
        .iter()
        .map(|c| (c.name.as_str(), c.ack_floor, c.lag))
        .collect();
    assert_eq!(got, vec![("billing", 4, 2)], "endpoints are not listed");

    let reset = |name: &str, position: Position| ResetConsumerRequest {
        name: name.into(),
        position: Some(position),
    };
    // Back to 2: 2 and 3 come again although they were acked.
    let floor = admin
        .reset_consumer(reset("billing", Position::Offset(2)))
        .await
        .unwrap()
        .into_inner()
        .ack_floor;
    assert_eq!(floor, 2);
    let mut stream = s
        .subscribe(durable("billing", 10, 30_000))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<u64> = vec![
        next_within(&mut stream, 5).await.offset,
        next_within(&mut stream, 5).await.offset,
    ];
    assert_eq!(got, vec![2, 3]);
    drop(stream);

    // To the latest: only what is published afterwards.
    admin
        .reset_consumer(reset("billing", Position::Latest(true)))
        .await
        .unwrap();
    publish(&mut p, pick("e6", "SO")).await;
    let mut stream = s
        .subscribe(durable("billing", 10, 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_within(&mut stream, 5).await.offset, 6);
    drop(stream);

    // Bad requests change nothing.
    for (request, field) in [
        (reset("billing", Position::Offset(0)), "offset"),
        (reset("billing", Position::Offset(99)), "offset"),
        (
            ResetConsumerRequest {
                name: "billing".into(),
                position: None,
            },
            "position",
        ),
        (reset("", Position::Latest(true)), "name"),
        (reset("@endpoint:x", Position::Latest(true)), "name"),
    ] {
        assert_invalid(admin.reset_consumer(request).await.unwrap_err(), field);
    }
    let missing = admin
        .reset_consumer(reset("nobody", Position::Earliest(true)))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    admin
        .delete_consumer(DeleteConsumerRequest {
            name: "billing".into(),
        })
        .await
        .unwrap();
    let list = crate::support::list_consumers(&mut admin).await;
    assert!(list.is_empty(), "{list:?}");
    let missing = admin
        .delete_consumer(DeleteConsumerRequest {
            name: "billing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// With max_deliveries, a message nobody acks is dead-lettered instead of
/// delivered forever; operators see it and redrive it.
#[tokio::test]
async fn max_deliveries_dead_letters_and_redrive() {
    use stevedore::pb::RedriveConsumerRequest;

    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut s = server.subscriber().await;
    let mut admin = server.admin().await;
    publish(&mut p, pick("poison", "SO")).await;
    let mut request = durable("dl", 10, 30_000);
    request.max_deliveries = 2;
    let mut stream = s.subscribe(request).await.unwrap().into_inner();
    let nack = |offset: u64| NackRequest {
        consumer: "dl".into(),
        offsets: vec![offset],
        delay: None,
    };
    let m = next_within(&mut stream, 5).await;
    assert_eq!((m.offset, m.delivery_attempt), (1, 1));
    s.nack(nack(1)).await.unwrap();
    let m = next_within(&mut stream, 5).await;
    assert_eq!((m.offset, m.delivery_attempt), (1, 2));
    s.nack(nack(1)).await.unwrap();
    // A third delivery would exceed the limit. A redelivery goes before new
    // events, so the next message being the new event shows 1 is not
    // coming back.
    publish(&mut p, pick("next", "SO")).await;
    let m = next_within(&mut stream, 5).await;
    assert_eq!((m.offset, m.delivery_attempt), (2, 1));
    s.ack(AckRequest {
        consumer: "dl".into(),
        offsets: vec![2],
    })
    .await
    .unwrap();

    let list = crate::support::list_consumers(&mut admin).await;
    assert_eq!(list.len(), 1);
    let c = &list[0];
    assert_eq!(
        (
            c.max_deliveries,
            c.dead_letters,
            c.dead_offsets.clone(),
            c.ack_floor
        ),
        (2, 1, vec![1], 3)
    );

    // Another max_deliveries for the same consumer is refused.
    let mut other = durable("dl", 10, 30_000);
    other.max_deliveries = 5;
    assert_invalid(s.subscribe(other).await.unwrap_err(), "max_deliveries");
    // And it has no meaning without a durable consumer.
    let mut plain = from(Start::Earliest(true));
    plain.max_deliveries = 5;
    assert_invalid(s.subscribe(plain).await.unwrap_err(), "max_deliveries");

    // The dead letters survive a restart; a redrive delivers them again.
    drop(stream);
    let server = server.restart().await;
    let mut s = server.subscriber().await;
    let mut admin = server.admin().await;
    let list = crate::support::list_consumers(&mut admin).await;
    assert_eq!((list[0].dead_letters, list[0].max_deliveries), (1, 2));
    let redriven = admin
        .redrive_consumer(RedriveConsumerRequest { name: "dl".into() })
        .await
        .unwrap()
        .into_inner()
        .redriven;
    assert_eq!(redriven, 1);
    let mut stream = s
        .subscribe(durable("dl", 10, 30_000))
        .await
        .unwrap()
        .into_inner();
    let m = next_within(&mut stream, 5).await;
    assert_eq!((m.offset, m.delivery_attempt), (1, 1));
    let list = crate::support::list_consumers(&mut admin).await;
    assert_eq!(list[0].dead_letters, 0, "redriven: not dead any more");
}
