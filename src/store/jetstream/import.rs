//! Copying an embedded log into an installation's stream with its offsets
//! (`stevedore migrate`, see `crate::store::migrate`): the stream is made
//! to start at the embedded log's first offset, and each atomic batch of
//! records is stored at its own offsets, as the same `EventRecord` bytes
//! with the same subject and headers an append would give them: each on
//! its id's subject, so the id stays claimed (an erased event's tombstone
//! too).

use async_nats::jetstream::{self, stream::State};
use tokio::sync::watch;

use super::{
    cluster::until_answered,
    log, publish,
    wire::{event_headers, request_error, EXPECTED_LAST_SUBJECT_SEQUENCE},
    ClusterOptions, EventStream, JetStreamError, StreamConfig,
};
use crate::{
    error::{Error, Result},
    model::Offset,
    store::{keys, RawRecord, StoreHealth},
};

/// Readies the stream of `options`' installation to take an embedded log
/// whose first offset is `first`: creates it starting there, or, if it
/// exists and never held an event, makes it again so. Refuses a stream that
/// holds (or held) events, naming it: offsets could not be kept. Returns
/// the stream's name.
pub async fn prepare_import(options: &ClusterOptions, first: Offset) -> Result<String> {
    let (health, _) = watch::channel(StoreHealth::default());
    let client = options.reach(health).await?;
    let config = StreamConfig {
        replicas: options.replicas,
        ..StreamConfig::with_prefix(&options.prefix)
    };
    config.validate()?;
    let name = config.stream.clone();
    let mut wanted = config.server_config();
    // A new stream's first sequence is 1 unless told otherwise.
    wanted.first_sequence = (first.get() > 1).then_some(first.get());
    let js = jetstream::new(client);
    let state = until_answered(&name, || stream_state(&js, &wanted)).await?;
    let refuse = |what: String| {
        Err(Error::FailedPrecondition(format!(
            "stream {name} {what}: migrate copies into an empty installation only, keeping \
             offsets; delete the installation's stream and buckets (nats_prefix {:?}) or \
             choose another nats_prefix",
            options.prefix
        )))
    };
    if state.messages > 0 {
        return refuse(format!(
            "already holds {} event(s) (offsets {}..={})",
            state.messages, state.first_sequence, state.last_sequence
        ));
    }
    if state.last_sequence + 1 == first.get() {
        return Ok(name);
    }
    if state.last_sequence > 0 {
        return refuse(format!(
            "held events up to offset {} (removed since)",
            state.last_sequence
        ));
    }
    // Empty since it was made (by a broker's start): made again to start
    // at `first`.
    until_answered(&name, || async {
        js.delete_stream(&name)
            .await
            .map_err(|e| request_error("stream delete", e))?;
        stream_state(&js, &wanted).await
    })
    .await?;
    Ok(name)
}

/// The state of the stream `wanted` names, created as `wanted` says if it
/// does not exist.
async fn stream_state(
    js: &jetstream::Context,
    wanted: &jetstream::stream::Config,
) -> std::result::Result<State, JetStreamError> {
    Ok(log::get_or_create(js, wanted).await?.1.state)
}

impl EventStream {
    /// Stores `records` (an embedded log's, at consecutive offsets that
    /// begin at this stream's next sequence) at their own offsets, as one
    /// atomic batch. A stream that stored them elsewhere (another writer
    /// got there first) is an error, and so is an id stored already.
    pub(super) async fn import(
        &self,
        records: &[RawRecord],
    ) -> std::result::Result<(), JetStreamError> {
        const WHAT: &str = "import";
        let Some(first) = records.first().map(|r| r.offset) else {
            return Ok(());
        };
        let mut messages = Vec::with_capacity(records.len());
        for (r, due) in records.iter().zip(first.through(Offset::new(u64::MAX))) {
            if r.offset != due {
                return Err(JetStreamError::Protocol {
                    what: WHAT,
                    reason: format!("offset {} given where {due} was due", r.offset),
                });
            }
            let (id, ordering_key) = identify(r)?;
            let mut headers = event_headers(&ordering_key);
            headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
            messages.push((self.config.subject(&id), headers, r.record.clone()));
        }
        let stored = match &messages[..] {
            [(subject, headers, payload)] => {
                let ack = publish::request(
                    &self.client,
                    subject,
                    headers.clone(),
                    payload.clone(),
                    WHAT,
                )
                .await?;
                if let Some(e) = ack.error {
                    return Err(e.into_error(WHAT));
                }
                Offset::new(ack.seq)
            }
            _ => {
                let all = messages.iter().map(|(s, h, p)| (s.as_str(), h, p));
                publish::atomic(&self.client, all).await?
            }
        };
        if stored != first {
            return Err(JetStreamError::Stream {
                stream: self.config.stream.clone(),
                reason: format!(
                    "stored the events of offsets from {first} at {stored}: another writer \
                     published meanwhile (is a broker running on this installation?)"
                ),
            });
        }
        Ok(())
    }
}

/// The id and ordering key of a stored record; a tombstone (an erased
/// event) keeps its id, its ordering key is gone.
fn identify(r: &RawRecord) -> std::result::Result<(String, String), JetStreamError> {
    let corrupt = |e: Error| JetStreamError::Corrupt {
        offset: r.offset,
        reason: e.to_string(),
    };
    if keys::is_tombstone(&r.record).map_err(corrupt)? {
        if let Some((id, _tenant, _erased)) =
            keys::decode_tombstone(r.offset, &r.record).map_err(corrupt)?
        {
            return Ok((id, String::new()));
        }
    }
    let stored = r.decode().map_err(corrupt)?;
    Ok((stored.event.id, stored.event.ordering_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_event;

    #[test]
    fn an_event_and_its_tombstone_are_identified_by_id() {
        let offset = Offset::new(7);
        let mut event = test_event("ev-1");
        event.event.ordering_key = "SO-1".into();
        let record = keys::encode_event_record(&event, 42);
        let live = RawRecord {
            offset,
            record: record.clone().into(),
        };
        let (id, key) = identify(&live).unwrap();
        assert_eq!((id.as_str(), key.as_str()), ("ev-1", "SO-1"));
        let erased = RawRecord {
            offset,
            record: keys::tombstone(offset, &record, "erased", 43)
                .unwrap()
                .into(),
        };
        let (id, key) = identify(&erased).unwrap();
        assert_eq!((id.as_str(), key.as_str()), ("ev-1", ""));
        let damaged = RawRecord {
            offset,
            record: bytes::Bytes::from_static(b"\xff\xff"),
        };
        assert!(matches!(
            identify(&damaged),
            Err(JetStreamError::Corrupt { .. })
        ));
    }
}
