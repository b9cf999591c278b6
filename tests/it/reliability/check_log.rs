//! The log after each restart: every acknowledged publish read back with
//! `GetEvent`, and at the end the whole log against the ledger.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use stevedore::pb::{
    subscribe_request::Start, subscriber_client::SubscriberClient, AckMode, GetEventRequest,
    SubscribeRequest,
};

use super::CALL_TIMEOUT;
use crate::support::{connect, log_has_event, status_text};

/// `GetEvent` of acknowledged events: each must be there with its id.
pub(super) async fn check_acked(addr: &str, events: &[(String, u64)]) -> Result<(), String> {
    let client = SubscriberClient::new(connect(addr).await?);
    let mut reads = futures::stream::iter(events.iter().map(|(id, offset)| {
        let mut client = client.clone();
        async move {
            let got = tokio::time::timeout(
                CALL_TIMEOUT,
                client.get_event(GetEventRequest {
                    offset: *offset,
                    ..Default::default()
                }),
            )
            .await;
            match got {
                Err(_) => Err(format!("GetEvent({offset}) timed out")),
                Ok(Err(s)) => Err(format!(
                    "ACKNOWLEDGED EVENT MISSING: {id:?} was acknowledged at offset {offset}; \
                     GetEvent({offset}) -> {}",
                    status_text(&s)
                )),
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let got = r.event.map(|e| e.id).unwrap_or_default();
                    if r.offset != *offset || got != *id {
                        Err(format!(
                            "{id:?} was acknowledged at offset {offset}, but GetEvent({offset}) \
                             returns {got:?} at offset {}",
                            r.offset
                        ))
                    } else {
                        Ok(())
                    }
                }
            }
        }
    }))
    .buffer_unordered(16);
    let mut errors = Vec::new();
    while let Some(r) = reads.next().await {
        if let Err(e) = r {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let n = errors.len();
    errors.sort();
    errors.truncate(10);
    Err(format!(
        "{n} acknowledged events failed GetEvent:\n  {}",
        errors.join("\n  ")
    ))
}

/// Replays the whole (quiescent) log and checks it against the ledger:
/// dense offsets, every acknowledged event at its offset, no id twice, and
/// nothing but our events and the broker's own (`stevedore.*`). Returns the
/// number of events and how many of ours were written but never
/// acknowledged.
pub(super) async fn check_log(
    addr: &str,
    acked: &HashMap<String, u64>,
    sent: &HashSet<String>,
) -> Result<(u64, usize, usize), String> {
    let mut client = SubscriberClient::new(connect(addr).await?);
    let mut stream = tokio::time::timeout(
        CALL_TIMEOUT,
        client.subscribe(SubscribeRequest {
            start: Some(Start::Earliest(true)),
            ack_mode: AckMode::None as i32,
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| "Subscribe timed out".to_owned())?
    .map_err(|s| format!("Subscribe: {}", status_text(&s)))?
    .into_inner();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log: Vec<(u64, String, String)> = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "reading the log took too long ({} events)",
                log.len()
            ));
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
            Ok(Ok(Some(m))) => {
                let id = m.event.map(|e| e.id).unwrap_or_default();
                log.push((m.offset, id, m.event_type));
            }
            Ok(Ok(None)) => return Err("the replay stream ended".into()),
            Ok(Err(s)) => return Err(format!("replay: {}", status_text(&s))),
            Err(_) => {
                // Idle: anything after what we have?
                let probe = log.last().map_or(1, |(o, _, _)| o + 1);
                if !log_has_event(&mut client, probe, CALL_TIMEOUT).await? {
                    break;
                }
                // Else the stream is just slow; keep reading.
            }
        }
    }
    let mut seen: HashMap<&str, u64> = HashMap::new();
    let (mut ours_unacked, mut broker_events) = (0, 0);
    let mut prev = 0u64;
    for (offset, id, event_type) in &log {
        if *offset != prev + 1 {
            return Err(format!(
                "the log is not dense: offset {offset} follows {prev}"
            ));
        }
        prev = *offset;
        if let Some(first) = seen.insert(id, *offset) {
            return Err(format!(
                "{id:?} is in the log twice, at offsets {first} and {offset}"
            ));
        }
        if event_type.starts_with("stevedore.") {
            broker_events += 1;
        } else if !sent.contains(id) {
            return Err(format!(
                "unknown event {id:?} ({event_type}) at offset {offset}"
            ));
        } else if !acked.contains_key(id) {
            ours_unacked += 1;
        }
    }
    let mut missing: Vec<(u64, &str)> = acked
        .iter()
        .filter(|(id, o)| seen.get(id.as_str()) != Some(o))
        .map(|(id, &o)| (o, id.as_str()))
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(format!(
            "ACKNOWLEDGED EVENTS MISSING from the replay: {} of {}, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    Ok((log.len() as u64, ours_unacked, broker_events))
}
