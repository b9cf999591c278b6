//! Publisher: offsets, ids, idempotency, all-or-nothing batches, streams,
//! bad input.

use futures::StreamExt;
use stevedore::pb::{self, event::Payload, GetEventRequest, PublishBatchRequest, PublishRequest};

use crate::support::{assert_invalid, inventory, pick, publish, TestServer};

#[tokio::test]
async fn publish_assigns_offsets_ids_and_defaults() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let a = p
        .publish(PublishRequest {
            event: Some(pick("", "SO-1")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.offset, 1);
    assert_eq!(a.event_id.len(), 26, "a ULID: {}", a.event_id);
    assert!(!a.duplicate);
    let b = p
        .publish(PublishRequest {
            event: Some(pick("mine-1", "SO-2")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.offset, b.event_id.as_str()), (2, "mine-1"));

    let mut s = server.subscriber().await;
    let got = s
        .get_event(GetEventRequest {
            offset: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = got.event.unwrap();
    assert_eq!(e.id, "mine-1");
    assert_eq!(e.ordering_key, "SO-2", "default key: the sales order");
    assert!(
        e.occurred_at.is_some(),
        "occurred_at defaults to publish time"
    );
    assert_eq!(got.event_type, "pick.confirmed");
    assert!(got.published_at.is_some());

    let missing = s
        .get_event(GetEventRequest {
            offset: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_invalid(
        s.get_event(GetEventRequest {
            offset: 0,
            ..Default::default()
        })
        .await
        .unwrap_err(),
        "offset",
    );
}

#[tokio::test]
async fn duplicates_are_detected_also_after_restart() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    assert_eq!(publish(&mut p, pick("order-7", "SO-7")).await, 1);
    assert_eq!(publish(&mut p, pick("other", "SO-8")).await, 2);
    let again = p
        .publish(PublishRequest {
            event: Some(pick("order-7", "SO-7")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.offset, again.duplicate), (1, true));

    let server = server.restart().await;
    let mut p = server.publisher().await;
    let again = p
        .publish(PublishRequest {
            event: Some(pick("order-7", "SO-7")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.offset, again.duplicate), (1, true));
    // Nothing was written by the duplicates: the next event gets offset 3.
    assert_eq!(publish(&mut p, pick("new", "SO-9")).await, 3);

    // In a batch, a repeated id is a duplicate of the first occurrence.
    let r = p
        .publish_batch(PublishBatchRequest {
            events: vec![pick("b1", "SO"), pick("b1", "SO"), pick("order-7", "SO")],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let got: Vec<(u64, bool)> = r.iter().map(|r| (r.offset, r.duplicate)).collect();
    assert_eq!(got, vec![(4, false), (4, true), (1, true)]);
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let mut bad = pick("bad", "SO");
    if let Some(Payload::PickConfirmed(pc)) = &mut bad.payload {
        pc.status = 99;
    }
    let err = p
        .publish_batch(PublishBatchRequest {
            events: vec![pick("a", "SO"), pick("b", "SO"), bad],
        })
        .await
        .unwrap_err();
    assert_invalid(err, "events[2].pick_confirmed.status");
    // Nothing was written: the good ids are still free and offsets start at 1.
    let r = p
        .publish_batch(PublishBatchRequest {
            events: vec![pick("a", "SO"), pick("b", "SO")],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        r.iter()
            .map(|r| (r.offset, r.duplicate))
            .collect::<Vec<_>>(),
        vec![(1, false), (2, false)]
    );

    assert_invalid(
        p.publish_batch(PublishBatchRequest { events: vec![] })
            .await
            .unwrap_err(),
        "events",
    );
}

#[tokio::test]
async fn batch_size_limit() {
    let server = TestServer::start_with(std::sync::Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.max_batch_events = 3
    })
    .await;
    let mut p = server.publisher().await;
    let events = (0..4).map(|i| pick(&format!("e{i}"), "SO")).collect();
    let err = p
        .publish_batch(PublishBatchRequest { events })
        .await
        .unwrap_err();
    assert!(err.message().contains("max_batch_events"), "{err:?}");
    assert_invalid(err, "events");
}

#[tokio::test]
async fn bad_input_is_rejected_naming_the_field() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let cases: Vec<(pb::Event, &str)> = vec![
        (pb::Event::default(), "event.payload"),
        (
            pb::Event {
                payload: Some(Payload::Custom(pb::CustomEvent {
                    r#type: "NotAType".into(),
                    data: None,
                })),
                ..Default::default()
            },
            "event.custom.type",
        ),
        (
            pb::Event {
                payload: Some(Payload::Custom(pb::CustomEvent {
                    r#type: "stevedore.endpoint.disabled".into(),
                    data: None,
                })),
                ..Default::default()
            },
            "event.custom.type",
        ),
        (
            {
                let mut e = inventory("x", "SKU", f64::INFINITY);
                e.id = "x".into();
                e
            },
            "event.inventory_updated.quantity_available",
        ),
        (
            {
                let mut e = pick("", "SO");
                e.occurred_at = Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -5,
                });
                e
            },
            "event.occurred_at",
        ),
        (
            {
                let mut e = pick("", "SO");
                e.id = "bad\nid".into();
                e
            },
            "event.id",
        ),
        (
            pb::Event {
                payload: Some(Payload::ChannelInventoryUpdated(
                    pb::ChannelInventoryUpdated::default(),
                )),
                ..Default::default()
            },
            "event.channel_inventory_updated.variant",
        ),
        (
            {
                let mut e = pick("", "SO");
                e.attributes.insert("k".into(), "v".repeat(2 * 1024 * 1024));
                e
            },
            "event",
        ),
    ];
    for (event, field) in cases {
        let err = p
            .publish(PublishRequest { event: Some(event) })
            .await
            .unwrap_err();
        assert_invalid(err, field);
    }
    assert_invalid(
        p.publish(PublishRequest { event: None }).await.unwrap_err(),
        "event",
    );
    // Nothing was written.
    assert_eq!(publish(&mut p, pick("", "SO")).await, 1);
}

#[tokio::test]
async fn publish_stream_is_pipelined_and_in_order() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let n = 500;
    let requests = futures::stream::iter((0..n).map(|i| PublishRequest {
        event: Some(pick(&format!("s{i}"), &format!("SO-{}", i % 7))),
    }));
    let mut acks = p.publish_stream(requests).await.unwrap().into_inner();
    let mut offsets = Vec::new();
    while let Some(ack) = acks.next().await {
        let ack = ack.unwrap();
        assert_eq!(ack.event_id, format!("s{}", offsets.len()));
        offsets.push(ack.offset);
    }
    assert_eq!(offsets, (1..=n as u64).collect::<Vec<_>>());

    // A bad event ends the stream after the acks of the events before it.
    let mut bad = pick("bad", "SO");
    bad.payload = None;
    let requests = futures::stream::iter(vec![
        PublishRequest {
            event: Some(pick("t0", "SO")),
        },
        PublishRequest { event: Some(bad) },
        PublishRequest {
            event: Some(pick("t2", "SO")),
        },
    ]);
    let mut acks = p.publish_stream(requests).await.unwrap().into_inner();
    assert_eq!(acks.next().await.unwrap().unwrap().offset, n as u64 + 1);
    assert_invalid(acks.next().await.unwrap().unwrap_err(), "event.payload");
    assert!(acks.next().await.is_none());
    assert_eq!(publish(&mut p, pick("t2", "SO")).await, n as u64 + 2);
}

#[tokio::test]
async fn concurrent_publishes_get_distinct_dense_offsets() {
    let server = TestServer::start().await;
    let p = server.publisher().await;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let mut p = p.clone();
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                for j in 0..20 {
                    offsets.push(publish(&mut p, pick(&format!("c{i}-{j}"), "SO")).await);
                }
                offsets
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=64 * 20).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_reused_id_with_other_content_is_flagged() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    assert_eq!(publish(&mut p, pick("id-1", "SO-1")).await, 1);

    // A retry of the same event (occurred_at unset both times, so it
    // defaults to a different publish time) is a plain duplicate.
    let retry = send(&mut p, pick("id-1", "SO-1")).await;
    assert_eq!((retry.offset, retry.duplicate), (1, true));
    assert!(!retry.payload_differs);

    // The same id for another sales order: still not written, but flagged.
    let reused = send(&mut p, pick("id-1", "SO-2")).await;
    assert_eq!((reused.offset, reused.duplicate), (1, true));
    assert!(reused.payload_differs);

    // Within one batch, against the batch's own first occurrence.
    let r = p
        .publish_batch(PublishBatchRequest {
            events: vec![pick("b", "SO-1"), pick("b", "SO-1"), pick("b", "SO-3")],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let got: Vec<(u64, bool, bool)> = r
        .iter()
        .map(|r| (r.offset, r.duplicate, r.payload_differs))
        .collect();
    assert_eq!(
        got,
        vec![(2, false, false), (2, true, false), (2, true, true)]
    );

    // After a restart the stored record is compared.
    let server = server.restart().await;
    let mut p = server.publisher().await;
    let reused = send(&mut p, pick("id-1", "SO-9")).await;
    assert_eq!(
        (reused.offset, reused.duplicate, reused.payload_differs),
        (1, true, true)
    );
    let retry = send(&mut p, pick("id-1", "SO-1")).await;
    assert_eq!(
        (retry.offset, retry.duplicate, retry.payload_differs),
        (1, true, false)
    );
}

async fn send(
    p: &mut pb::publisher_client::PublisherClient<tonic::transport::Channel>,
    e: pb::Event,
) -> pb::PublishResponse {
    p.publish(PublishRequest { event: Some(e) })
        .await
        .unwrap()
        .into_inner()
}

/// One id sent 200 times through one PublishStream, after 300 other events:
/// the pipelined requests land in the same group commits, so only the
/// group's own id map (the log's index has not seen them yet) makes them
/// one event.
#[tokio::test]
async fn a_repeated_id_in_one_publish_stream_is_stored_once() {
    let server = TestServer::start().await;
    let mut p = server.publisher().await;
    let requests = (0..300)
        .map(|i| pick(&format!("other-{i}"), &format!("SO-{}", i % 7)))
        .chain((0..200).map(|_| pick("repeated", "SO-R")))
        .map(|e| PublishRequest { event: Some(e) });
    let mut acks = p
        .publish_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(ack) = acks.next().await {
        got.push(ack.unwrap());
    }
    assert_eq!(got.len(), 500);
    let others: Vec<u64> = got[..300].iter().map(|a| a.offset).collect();
    assert_eq!(others, (1..=300).collect::<Vec<u64>>());
    let stored_at: std::collections::BTreeSet<u64> = got[300..].iter().map(|a| a.offset).collect();
    assert_eq!(
        stored_at,
        [301].into(),
        "the repeated id was stored at several offsets"
    );
    let repeated: Vec<(u64, bool)> = got[300..].iter().map(|a| (a.offset, a.duplicate)).collect();
    let want: Vec<(u64, bool)> = std::iter::once((301, false))
        .chain(std::iter::repeat_n((301, true), 199))
        .collect();
    assert_eq!(repeated, want, "every copy answers with the one offset");
    // Exactly 301 events are stored: the next one is 302.
    assert_eq!(publish(&mut p, pick("after", "SO")).await, 302);
}

/// Many tasks publish the same few ids at once, one event per call, so
/// copies from different requests share group commits: each id is stored
/// once, at one offset, and only one call is told it is not a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_of_the_same_ids_store_each_once() {
    const TASKS: usize = 32;
    const IDS: usize = 4;
    const ROUNDS: usize = 10;
    let server = TestServer::start().await;
    let p = server.publisher().await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (mut p, start) = (p.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let mut acks = Vec::new();
                for r in 0..ROUNDS {
                    let id = format!("same-{}", (t + r) % IDS);
                    let ack = p
                        .publish(PublishRequest {
                            event: Some(pick(&id, "SO")),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    acks.push((id, ack.offset, ack.duplicate));
                }
                acks
            })
        })
        .collect();
    let mut offsets = std::collections::BTreeMap::<String, Vec<u64>>::new();
    let mut firsts = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        for (id, offset, duplicate) in t.await.unwrap() {
            offsets.entry(id.clone()).or_default().push(offset);
            *firsts.entry(id).or_default() += usize::from(!duplicate);
        }
    }
    assert_eq!(offsets.len(), IDS);
    let mut stored: Vec<u64> = Vec::new();
    for (id, mut o) in offsets {
        assert_eq!(o.len(), TASKS * ROUNDS / IDS, "{id}");
        o.sort();
        o.dedup();
        assert_eq!(o.len(), 1, "{id} was stored at several offsets: {o:?}");
        stored.push(o[0]);
        assert_eq!(firsts[&id], 1, "{id}: calls told it was new");
    }
    stored.sort();
    assert_eq!(stored, (1..=IDS as u64).collect::<Vec<u64>>());
    // Exactly one event per id is stored: the next one follows them.
    let mut p = p;
    assert_eq!(publish(&mut p, pick("after", "SO")).await, IDS as u64 + 1);
}
