//! The durable consumer of the load, and the wait until it has processed
//! every acknowledged event.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use futures::FutureExt as _;
use stevedore::pb::{
    subscribe_request::Start, subscriber_client::SubscriberClient, AckMode, AckRequest,
    NackRequest, SubscribeRequest,
};

use super::{
    shared::{next_broker, Shared},
    CALL_TIMEOUT, CONSUMER, DRAIN_TIMEOUT, SUB_ACK_WAIT_MS, SUB_MAX_IN_FLIGHT,
};
use crate::support::{connect, ms, status_text, Rng};

/// The durable consumer: takes what is there (up to its window), records
/// it, acks it, repeats; now and then it acks too late (after the ack wait)
/// or nacks a batch instead. On each broker it opens one fresh stream,
/// which must never bring back an offset acked before it was opened.
pub(super) async fn subscriber(sh: Arc<Shared>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut addr_rx = sh.addr.clone();
    let mut failed_gen = 0u64;
    'brokers: while let Some((generation, addr)) =
        next_broker(&mut addr_rx, failed_gen, &sh.sub_stop).await
    {
        // After a failure on a live broker (already reported) the next
        // round tries the same broker again, after a pause.
        if generation <= sh.sub.lock().unwrap().last_gen {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sh.sub.lock().unwrap().last_gen = generation;
        if generation <= sh.killed.load(Ordering::SeqCst) {
            failed_gen = generation;
            continue;
        }
        let who = format!("subscriber ({CONSUMER})");
        let mut client = match connect(&addr).await {
            Ok(c) => SubscriberClient::new(c),
            Err(e) => {
                sh.call_failed(generation, &who, e);
                continue;
            }
        };
        // Every ack of earlier streams has returned (acks are sequential).
        let acked_before: HashSet<u64> = sh.sub.lock().unwrap().acked.clone();
        let request = SubscribeRequest {
            consumer: CONSUMER.into(),
            start: Some(Start::Earliest(true)),
            ack_mode: AckMode::Explicit as i32,
            max_in_flight: SUB_MAX_IN_FLIGHT,
            ack_wait: Some(ms(SUB_ACK_WAIT_MS)),
            ..Default::default()
        };
        let mut stream = match tokio::time::timeout(CALL_TIMEOUT, client.subscribe(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                sh.call_failed(generation, &who, format!("Subscribe: {}", status_text(&s)));
                continue;
            }
            Err(_) => {
                sh.call_failed(generation, &who, "Subscribe timed out".into());
                continue;
            }
        };
        {
            let mut sub = sh.sub.lock().unwrap();
            sub.streams += 1;
            if !acked_before.is_empty() {
                sub.checked_streams += 1;
                sub.checked_acks += acked_before.len() as u64;
            }
        }
        loop {
            if sh.sub_stop.load(Ordering::SeqCst) {
                break 'brokers;
            }
            let first =
                match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(m))) => m,
                    Ok(Ok(None)) => {
                        sh.call_failed(generation, &who, "the Subscribe stream ended".into());
                        continue 'brokers;
                    }
                    Ok(Err(s)) => {
                        sh.call_failed(generation, &who, format!("Subscribe: {}", status_text(&s)));
                        continue 'brokers;
                    }
                };
            let mut batch = vec![first];
            while batch.len() < SUB_MAX_IN_FLIGHT as usize {
                match stream.message().now_or_never() {
                    Some(Ok(Some(m))) => batch.push(m),
                    // An end or an error shows on the next read.
                    _ => break,
                }
            }
            let mut errors = Vec::new();
            {
                let mut sub = sh.sub.lock().unwrap();
                for m in &batch {
                    sub.messages += 1;
                    if m.delivery_attempt > 1 {
                        sub.redelivered += 1;
                    }
                    if acked_before.contains(&m.offset) {
                        errors.push(format!(
                            "CONSUMER CURSOR BEHIND ITS ACKS: start #{generation} delivered offset {} \
                             (delivery_attempt {}) on a fresh stream of consumer {CONSUMER:?}, although \
                             Ack of that offset had returned OK before the stream was opened",
                            m.offset, m.delivery_attempt
                        ));
                    } else if sub.acked.contains(&m.offset) {
                        sub.again_after_ack += 1;
                    }
                    let id = m.event.as_ref().map(|e| e.id.clone()).unwrap_or_default();
                    match sub.processed.entry(m.offset) {
                        Entry::Occupied(e) if *e.get() != id => errors.push(format!(
                            "consumer {CONSUMER:?}: offset {} came as {:?} and later as {id:?}",
                            m.offset,
                            e.get()
                        )),
                        Entry::Occupied(_) => {}
                        Entry::Vacant(e) => {
                            e.insert(id);
                        }
                    }
                }
            }
            for e in errors {
                sh.fail(e);
            }
            let offsets: Vec<u64> = batch.iter().map(|m| m.offset).collect();
            match rng.next() % 12 {
                // Hand the batch back: it must come again.
                0 => {
                    let nack = client.nack(NackRequest {
                        consumer: CONSUMER.into(),
                        offsets: offsets.clone(),
                        delay: None,
                    });
                    match tokio::time::timeout(CALL_TIMEOUT, nack).await {
                        Ok(Ok(_)) => sh.sub.lock().unwrap().nacked += offsets.len() as u64,
                        Ok(Err(s)) => {
                            sh.call_failed(generation, &who, format!("Nack: {}", status_text(&s)));
                            continue 'brokers;
                        }
                        Err(_) => {
                            sh.call_failed(generation, &who, "Nack timed out".into());
                            continue 'brokers;
                        }
                    }
                    continue;
                }
                // Ack after the leases ran out (they are redelivered
                // meanwhile; the late ack still counts).
                1 | 2 => {
                    sh.sub.lock().unwrap().late_acks += offsets.len() as u64;
                    tokio::time::sleep(Duration::from_millis(SUB_ACK_WAIT_MS + 150)).await;
                }
                _ => {}
            }
            let ack = client.ack(AckRequest {
                consumer: CONSUMER.into(),
                offsets: offsets.clone(),
            });
            match tokio::time::timeout(CALL_TIMEOUT, ack).await {
                Ok(Ok(_)) => sh.sub.lock().unwrap().acked.extend(offsets),
                Ok(Err(s)) => {
                    sh.sub.lock().unwrap().in_doubt.extend(offsets);
                    sh.call_failed(generation, &who, format!("Ack: {}", status_text(&s)));
                    continue 'brokers;
                }
                Err(_) => {
                    sh.sub.lock().unwrap().in_doubt.extend(offsets);
                    sh.call_failed(generation, &who, "Ack timed out".into());
                    continue 'brokers;
                }
            }
        }
    }
}

/// Waits until the consumer has processed every acknowledged event, and
/// acked each of them (or sent an `Ack` for it that a broker stop cut off,
/// which may have been applied). Returns how many were left in doubt.
pub(super) async fn wait_processed(
    sh: &Shared,
    acked: &HashMap<String, u64>,
) -> Result<usize, String> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let (missing, unacked, in_doubt) = {
            let sub = sh.sub.lock().unwrap();
            for (id, o) in acked {
                if let Some(got) = sub.processed.get(o) {
                    if got != id {
                        return Err(format!(
                            "consumer {CONSUMER:?} got {got:?} at offset {o}, acknowledged as {id:?}"
                        ));
                    }
                }
            }
            let mut missing: Vec<u64> = acked
                .values()
                .filter(|o| !sub.processed.contains_key(o))
                .copied()
                .collect();
            missing.sort();
            let unacked = acked.values().filter(|o| !sub.acked.contains(o));
            let in_doubt = unacked.clone().filter(|o| sub.in_doubt.contains(o)).count();
            (missing, unacked.count() - in_doubt, in_doubt)
        };
        if missing.is_empty() && unacked == 0 {
            return Ok(in_doubt);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "consumer {CONSUMER:?}: {DRAIN_TIMEOUT:?} after the load stopped, {} acknowledged \
                 events were never processed (lowest {:?}) and {unacked} were processed but never \
                 acked (nor redelivered after an Ack a broker stop cut off)",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
