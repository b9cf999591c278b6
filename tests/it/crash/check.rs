//! The log against the ledger, while nothing publishes: point reads of
//! every acked event, then a replay of the whole log (dense offsets, no id
//! twice, no unknown id, every acked id at its offset).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures::StreamExt;
use stevedore::pb::{
    subscribe_request::Start, subscriber_client::SubscriberClient, AckMode, GetEventRequest,
    SubscribeRequest,
};

use super::{events::expected_payload, CALL_TIMEOUT, SCAN_TIMEOUT};
use crate::support::{connect, log_has_event, status_text};

pub(super) struct Checked {
    pub(super) head: u64,
    /// Events in the log that were never acknowledged (written, ack lost).
    pub(super) unacked_in_log: usize,
}

/// Checks the log against `acked` while nothing publishes. `exact`: every id
/// in the log must have been acknowledged.
pub(super) async fn check_log(
    addr: &str,
    generation: u64,
    acked: &HashMap<String, u64>,
    sent: &HashSet<String>,
    exact: bool,
) -> Result<Checked, String> {
    let mut client = SubscriberClient::new(connect(addr).await?);

    // 1. Point reads of every acknowledged event.
    let mut reads = futures::stream::iter(acked.iter().map(|(id, &offset)| {
        let mut client = client.clone();
        async move {
            let got = tokio::time::timeout(CALL_TIMEOUT, client.get_event(GetEventRequest { offset, ..Default::default() })).await;
            let resp = match got {
                Err(_) => return Err(format!("GetEvent({offset}) timed out after {CALL_TIMEOUT:?}")),
                Ok(Err(s)) => {
                    return Err(format!(
                        "acknowledged {id:?} at offset {offset} is missing: GetEvent({offset}) -> {}",
                        status_text(&s)
                    ))
                }
                Ok(Ok(r)) => r.into_inner(),
            };
            let event = resp.event.unwrap_or_default();
            if resp.offset != offset || event.id != *id {
                return Err(format!(
                    "acknowledged {id:?} at offset {offset}, but GetEvent({offset}) returns {:?} at offset {}",
                    event.id, resp.offset
                ));
            }
            if event.payload != expected_payload(id) {
                return Err(format!("{id:?} at offset {offset}: payload differs: {:?}", event.payload));
            }
            Ok(())
        }
    }))
    .buffer_unordered(16);
    while let Some(r) = reads.next().await {
        r.map_err(|e| format!("after start #{generation}: {e}"))?;
    }
    drop(reads);

    // 2. The whole log, replayed, up to the head. The log is quiescent, so
    //    the head is where GetEvent first finds nothing.
    let deadline = Instant::now() + SCAN_TIMEOUT;
    let mut stream = tokio::time::timeout(
        CALL_TIMEOUT,
        client.subscribe(SubscribeRequest {
            start: Some(Start::Earliest(true)),
            ack_mode: AckMode::None as i32,
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| format!("Subscribe timed out after {CALL_TIMEOUT:?}"))?
    .map_err(|s| format!("Subscribe: {}", status_text(&s)))?
    .into_inner();
    let mut log: Vec<(u64, String)> = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "after start #{generation}: reading the log took over {SCAN_TIMEOUT:?} ({} events read)",
                log.len()
            ));
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
            Ok(Ok(Some(m))) => {
                let event = m.event.unwrap_or_default();
                if let Some(expected) = expected_payload(&event.id) {
                    if event.payload != Some(expected) {
                        return Err(format!(
                            "after start #{generation}: {:?} at offset {}: payload differs",
                            event.id, m.offset
                        ));
                    }
                }
                log.push((m.offset, event.id));
            }
            Ok(Ok(None)) => {
                return Err(format!("after start #{generation}: Subscribe stream ended"))
            }
            Ok(Err(s)) => {
                return Err(format!(
                    "after start #{generation}: Subscribe: {}",
                    status_text(&s)
                ))
            }
            Err(_) => {
                // Idle: is there anything after what we have?
                let probe = log.last().map_or(1, |(o, _)| o + 1);
                if !log_has_event(&mut client, probe, CALL_TIMEOUT).await? {
                    break;
                }
                // Else the stream is just slow; keep reading.
            }
        }
    }
    drop(stream);

    let head = log.last().map_or(1, |(o, _)| o + 1);
    let mut seen: HashMap<&str, u64> = HashMap::new();
    let mut prev = 0u64;
    for (offset, id) in &log {
        if *offset <= prev {
            return Err(format!(
                "after start #{generation}: log offsets not strictly increasing: {offset} after {prev}"
            ));
        }
        if *offset != prev + 1 {
            return Err(format!(
                "after start #{generation}: gap in the log: offset {offset} follows {prev} (offsets are documented dense)"
            ));
        }
        prev = *offset;
        if let Some(first) = seen.insert(id, *offset) {
            return Err(format!(
                "after start #{generation}: {id:?} is in the log twice, at offsets {first} and {offset}"
            ));
        }
        if !sent.contains(id) {
            return Err(format!(
                "after start #{generation}: unknown id {id:?} at offset {offset}"
            ));
        }
    }
    let mut unacked_in_log = 0;
    for (_, id) in &log {
        if !acked.contains_key(id) {
            unacked_in_log += 1;
            if exact {
                return Err(format!(
                    "at the end: {id:?} is in the log at offset {} but was never acknowledged, \
                     although every publisher retried until acked",
                    seen[id.as_str()]
                ));
            }
        }
    }
    for (id, offset) in acked {
        match seen.get(id.as_str()) {
            Some(o) if o == offset => {}
            Some(o) => {
                return Err(format!(
                    "after start #{generation}: {id:?} acknowledged at offset {offset} but replayed at offset {o}"
                ))
            }
            None => {
                return Err(format!(
                    "after start #{generation}: acknowledged {id:?} (offset {offset}) is missing from the replay \
                     (head {head})"
                ))
            }
        }
    }
    Ok(Checked {
        head,
        unacked_in_log,
    })
}
