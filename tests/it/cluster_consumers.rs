//! Named durable consumers in cluster mode: two broker processes on a real
//! 3-node nats-server cluster. The primary broker serves the consumer;
//! the other forwards Subscribe, Ack, Nack and the Admin consumer calls to
//! it. Competing streams on both brokers share the consumer's events (each
//! event to one stream), acks and nacks sent to the other broker count,
//! and both brokers report the same position afterwards. Brokers serving
//! TLS forward to each other over TLS, trusting `peer_ca_file`.
//!
//! Needs nats-server (`support::nats`): `cargo test --test it -- --ignored cluster_`.

use std::{collections::BTreeMap, time::Duration};

use stevedore::pb::{
    self, admin_client::AdminClient, subscribe_request::Start, subscriber_client::SubscriberClient,
    AckMode, AckRequest, NackRequest, SubscribeRequest,
};
use tonic::transport::Channel;

use crate::{
    cluster_brokers::two_brokers,
    support::{connect_tls, nats::NatsCluster, next_within, pick, publish_answer, self_signed},
};

/// A stream on consumer `name`: explicit acks, `max_in_flight` 5, 30 s
/// ack wait (nothing is redelivered by timeout within the test). Right
/// after the brokers start no broker may be the primary yet: that answer
/// (UNAVAILABLE, try again) is asked again for up to 20 s.
async fn stream_on(channel: &Channel, name: &str) -> tonic::Streaming<pb::SubscribeResponse> {
    for _ in 0..100 {
        match subscribe(channel, name).await {
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            answer => {
                return answer
                    .expect("Subscribe on a named consumer works on either broker")
                    .into_inner()
            }
        }
    }
    panic!("no broker became the primary within 20 s");
}

async fn subscribe(
    channel: &Channel,
    name: &str,
) -> Result<tonic::Response<tonic::Streaming<pb::SubscribeResponse>>, tonic::Status> {
    SubscriberClient::new(channel.clone())
        .subscribe(SubscribeRequest {
            consumer: name.into(),
            start: Some(Start::Earliest(true)),
            ack_mode: AckMode::Explicit as i32,
            max_in_flight: 5,
            ack_wait: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
}

async fn ack(channel: &Channel, name: &str, offsets: Vec<u64>) {
    SubscriberClient::new(channel.clone())
        .ack(AckRequest {
            consumer: name.into(),
            offsets,
        })
        .await
        .expect("Ack works on either broker");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_consumer_streams_on_both_brokers_compete_and_take_acks_from_either() {
    let pair = two_brokers("cons").await;
    let mut publisher = pb::publisher_client::PublisherClient::new(pair.a.clone());
    for i in 0..30 {
        publish_answer(&mut publisher, pick(&format!("c-{i}"), "SO-1")).await;
    }
    // Streams on both brokers: one is served where the consumer lives, the
    // other through the forward.
    let mut on_a = stream_on(&pair.a, "erp").await;
    let mut on_b = stream_on(&pair.b, "erp").await;

    // With five in flight each and nothing acked, each stream holds five
    // distinct events.
    let mut seen: BTreeMap<u64, (char, u32)> = BTreeMap::new();
    for (tag, stream) in [('a', &mut on_a), ('b', &mut on_b)] {
        for _ in 0..5 {
            let m = next_within(stream, 30).await;
            let before = seen.insert(m.offset, (tag, m.delivery_attempt));
            assert_eq!(before, None, "offset {} handed to two streams", m.offset);
        }
    }

    // A nack sent to the other broker: the event comes again, attempt 2.
    let (&nacked, &(tag, _)) = seen.iter().next().expect("ten seen");
    let nack_to = if tag == 'a' { &pair.b } else { &pair.a };
    SubscriberClient::new(nack_to.clone())
        .nack(NackRequest {
            consumer: "erp".into(),
            offsets: vec![nacked],
            delay: None,
        })
        .await
        .expect("Nack works on either broker");
    seen.remove(&nacked);

    // Acks go to the other broker than the stream's; every event arrives,
    // once (the nacked one twice).
    for o in seen.iter().map(|(o, (t, _))| (*o, *t)).collect::<Vec<_>>() {
        ack(if o.1 == 'a' { &pair.b } else { &pair.a }, "erp", vec![o.0]).await;
    }
    let mut attempts = BTreeMap::new();
    for (o, (_, attempt)) in &seen {
        attempts.insert(*o, *attempt);
    }
    let mut turn = 0;
    while attempts.len() < 30 {
        turn += 1;
        assert!(turn < 200, "not every event arrived: {attempts:?}");
        let (tag, stream) = if turn % 2 == 0 {
            ('a', &mut on_a)
        } else {
            ('b', &mut on_b)
        };
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), stream.message())
            .await
            .map(|r| r.expect("stream ok"))
        else {
            continue;
        };
        assert!(
            attempts.insert(m.offset, m.delivery_attempt).is_none(),
            "offset {} delivered twice: {attempts:?}",
            m.offset
        );
        ack(
            if tag == 'a' { &pair.b } else { &pair.a },
            "erp",
            vec![m.offset],
        )
        .await;
    }
    assert_eq!(attempts.get(&nacked), Some(&2), "{attempts:?}");
    assert!(
        attempts.values().filter(|&&a| a != 1).count() == 1,
        "{attempts:?}"
    );

    // Both brokers report the consumer done with all thirty.
    for channel in [&pair.a, &pair.b] {
        let mut floor = 0;
        for _ in 0..50 {
            let list = AdminClient::new(channel.clone())
                .list_consumers(pb::ListConsumersRequest::default())
                .await
                .expect("ListConsumers works on either broker")
                .into_inner();
            let erp = list
                .consumers
                .iter()
                .find(|c| c.name == "erp")
                .expect("listed");
            floor = erp.ack_floor;
            if floor == 31 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(floor, 31);
    }
}

/// ListConsumers through `channel`, asked again while no broker is the
/// primary yet (UNAVAILABLE right after a start), for up to 20 s.
async fn list_consumers(channel: &Channel) -> Result<pb::ListConsumersResponse, tonic::Status> {
    let mut answer = Err(tonic::Status::unavailable("not asked"));
    for _ in 0..100 {
        answer = AdminClient::new(channel.clone())
            .list_consumers(pb::ListConsumersRequest::default())
            .await
            .map(tonic::Response::into_inner);
        match &answer {
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && s.message().contains("at the moment") =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            _ => break,
        }
    }
    answer
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs nats-server"]
async fn cluster_tls_brokers_forward_to_the_primary_trusting_peer_ca_file() {
    let cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let tls = [("STEVEDORE_TLS_CERT", cert), ("STEVEDORE_TLS_KEY", key)];
    let trusting = [tls[0], tls[1], ("STEVEDORE_PEER_CA_FILE", cert)];
    let mut channels = Vec::new();
    let mut brokers = Vec::new();
    for generation in 1..=2 {
        let broker = cluster
            .start_broker(dir.path(), generation, "tlsfwd", &trusting)
            .await
            .unwrap_or_else(|e| panic!("broker {generation}: {e}"));
        channels.push(connect_tls(&broker.addr, cert.as_ref()).await.unwrap());
        brokers.push(broker);
    }
    // One of the two is the primary; the other forwards over TLS.
    for channel in &channels {
        let answer = list_consumers(channel).await;
        assert!(
            answer.is_ok(),
            "ListConsumers on either TLS broker: {answer:?}"
        );
    }

    // A third broker trusting only the public roots cannot forward: the
    // call says which broker it could not reach.
    let third = cluster
        .start_broker(dir.path(), 3, "tlsfwd", &tls)
        .await
        .unwrap_or_else(|e| panic!("broker 3: {e}"));
    let channel = connect_tls(&third.addr, cert.as_ref()).await.unwrap();
    let refused = list_consumers(&channel).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("https://127.0.0.1:")
            && refused.message().contains("cannot be reached"),
        "{refused:?}"
    );
}
