//! The event log on one replicated JetStream stream: appends of one event
//! and of an atomic batch, deduplicated by event id, and the head.
//!
//! An append is answered once the stream's Raft quorum has stored it; with
//! every node on `sync_interval: always` (checked by [`super::preflight`])
//! that is on disk on a majority, so an acknowledged event survives the loss
//! of any one node.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use async_nats::{jetstream, Client, HeaderMap};
use bytes::Bytes;

use super::{
    bucket, publish,
    wire::{
        event_headers, request_error, PubAckReply, EXPECTED_LAST_SUBJECT_SEQUENCE,
        SUBJECT_IN_PROCESS, WRONG_LAST_SEQUENCE,
    },
    JetStreamError,
};
use crate::{
    model::{Appended, NewEvent, Offset},
    store::keys,
};

/// The server's default limit of messages in one atomic batch
/// (`jetstream.max_batch_size`).
pub const SERVER_MAX_BATCH: usize = 1000;
/// An append refused for holding stored ids is retried without them; a
/// racing broker can store one of the rest meanwhile, and a replica asked
/// which ids are stored can lag, so a few rounds, a pause apart.
const STORED_ROUNDS: usize = 10;
/// A publish refused because another publisher's message of the same id
/// is still in flight at the leader ([`SUBJECT_IN_PROCESS`]) is sent again
/// after a pause, for about 2 s in all: once that message is stored, the
/// id answers as a duplicate.
const IN_PROCESS_ROUNDS: usize = 100;
const IN_PROCESS_PAUSE: Duration = Duration::from_millis(20);
/// The stream's metadata entry that says how event ids are kept: one
/// subject per id ([`super::ids`]). A stream without it was made by an
/// earlier build, which kept them in a bucket of claims.
const IDS_METADATA: (&str, &str) = ("stevedore_event_ids", "subject per id");

/// Where and how the log lives on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// The stream's name (letters, digits, `-` and `_`).
    pub stream: String,
    /// Each event's subject is `<subject_prefix>.<key>`, its id made
    /// subject-safe ([`bucket::encode_key`]); the stream takes
    /// `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// Copies of every event (the stream's replicas; 3 for a 3-node cluster).
    pub replicas: usize,
    /// How long the server remembers a message id for deduplication (the
    /// events carry none; the state bucket's writes do not use it either).
    pub duplicate_window: Duration,
    /// Most events in one atomic batch (at most the server's
    /// `max_batch_size`, by default [`SERVER_MAX_BATCH`]).
    pub max_batch: usize,
}

impl StreamConfig {
    /// The log of the installation named `prefix` (several installations
    /// share one cluster under different prefixes): stream
    /// `<PREFIX>_EVENTS`, subjects `<prefix>.events.<id>`, R3, a
    /// two-minute deduplication window.
    pub fn with_prefix(prefix: &str) -> Self {
        StreamConfig {
            stream: format!("{}_EVENTS", prefix.to_ascii_uppercase()),
            subject_prefix: format!("{prefix}.events"),
            replicas: 3,
            duplicate_window: Duration::from_secs(120),
            max_batch: SERVER_MAX_BATCH,
        }
    }

    /// Checks the names and numbers before anything is created.
    pub fn validate(&self) -> Result<(), JetStreamError> {
        let bad = |field, reason: &str| {
            Err(JetStreamError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.stream.is_empty() || self.stream.len() > 255 || !self.stream.chars().all(name_ok) {
            return bad("stream", "1 to 255 letters, digits, '-' or '_'");
        }
        let token_ok = |t: &str| !t.is_empty() && t.chars().all(name_ok);
        if self.subject_prefix.len() > 128 || !self.subject_prefix.split('.').all(token_ok) {
            return bad(
                "subject_prefix",
                "dot-separated tokens of letters, digits, '-' or '_' (no wildcards), at most 128 bytes",
            );
        }
        if !(1..=5).contains(&self.replicas) {
            return bad("replicas", "1 to 5 (JetStream's limit)");
        }
        if self.duplicate_window < Duration::from_secs(1) {
            return bad("duplicate_window", "at least 1s");
        }
        if self.max_batch < 2 {
            return bad("max_batch", "at least 2");
        }
        Ok(())
    }

    /// The stream as the server is asked to create it.
    pub fn server_config(&self) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            allow_atomic_publish: true,
            allow_direct: true,
            metadata: [IDS_METADATA]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    /// The core NATS subject on which brokers tell each other that they
    /// appended ([`super::follow`]); outside the stream's subjects, so
    /// never stored.
    pub fn head_subject(&self) -> String {
        format!("_STEVEDORE.HEAD.{}", self.stream)
    }

    /// The subject of event `id` (its claim: [`super::ids`]).
    pub fn subject(&self, id: &str) -> String {
        format!("{}.{}", self.subject_prefix, bucket::encode_key(id))
    }
}

/// The event log on its stream; cheap to clone.
#[derive(Clone)]
pub struct EventStream {
    pub(super) client: Client,
    pub(super) stream: jetstream::stream::Stream,
    pub(super) config: StreamConfig,
}

/// One event ready to publish.
struct Outgoing {
    id: String,
    subject: String,
    headers: HeaderMap,
    /// The `EventRecord` bytes, as the embedded log stores them.
    record: Bytes,
}

impl EventStream {
    /// Creates the stream, or checks that the existing one is set up as this
    /// log needs (its subjects, replicas, atomic batches and direct gets).
    pub async fn open(client: Client, config: StreamConfig) -> Result<Self, JetStreamError> {
        config.validate()?;
        let js = jetstream::new(client.clone());
        let wanted = config.server_config();
        let (stream, info) = get_or_create(&js, &wanted).await?;
        let have = &info.config;
        let mismatch = |what: &str| {
            Err(JetStreamError::Stream {
                stream: config.stream.clone(),
                reason: format!(
                    "exists with {what}; update the stream (nats stream edit) or choose another prefix"
                ),
            })
        };
        if have.subjects != wanted.subjects {
            return mismatch(&format!(
                "subjects {:?}, not {:?}",
                have.subjects, wanted.subjects
            ));
        }
        if have.num_replicas != config.replicas {
            return mismatch(&format!(
                "{} replicas, not {}",
                have.num_replicas, config.replicas
            ));
        }
        if !have.allow_atomic_publish || !have.allow_direct {
            return mismatch("allow_atomic or allow_direct off");
        }
        if have.metadata.get(IDS_METADATA.0).map(String::as_str) != Some(IDS_METADATA.1) {
            return Err(JetStreamError::Stream {
                stream: config.stream.clone(),
                reason: format!(
                    "was made by an earlier stevedore build, which kept event ids in a bucket \
                     of claims (metadata {:?} is not {:?}); this build cannot take it over: \
                     choose another nats_prefix, or remove the stream if its events are not \
                     needed",
                    IDS_METADATA.0, IDS_METADATA.1
                ),
            });
        }
        Ok(EventStream {
            client,
            stream,
            config,
        })
    }

    /// Its settings.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// The offset of the last event (0: none yet), as the stream's leader
    /// knows it.
    pub async fn head(&self) -> Result<Offset, JetStreamError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| request_error("stream info", e))?;
        Ok(Offset::new(info.state.last_sequence))
    }

    /// Appends one event and waits for the quorum's ack. An id stored
    /// before (its subject holds a message: [`super::ids`]) writes nothing
    /// and answers with the stored event's offset and `duplicate = true`.
    pub async fn append(&self, event: &NewEvent) -> Result<Appended, JetStreamError> {
        let m = self.outgoing(event, keys::unix_nanos(SystemTime::now()));
        self.publish_one(&m).await
    }

    /// Appends `events` all or nothing (one atomic batch) and waits for the
    /// quorum's ack. As in the embedded log, an id already stored or
    /// repeated in the batch answers with the first one's offset and
    /// `duplicate = true`, and only the other events are written.
    pub async fn append_batch(&self, events: &[NewEvent]) -> Result<Vec<Appended>, JetStreamError> {
        let published = keys::unix_nanos(SystemTime::now());
        let all: Vec<Outgoing> = events.iter().map(|e| self.outgoing(e, published)).collect();
        // The first event of each id; later ones answer as its duplicates.
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(all.len());
        for (i, m) in all.iter().enumerate() {
            first.entry(m.id.as_str()).or_insert(i);
        }
        let mut pending: Vec<usize> = (0..all.len())
            .filter(|&i| first[all[i].id.as_str()] == i)
            .collect();
        if pending.len() > self.config.max_batch {
            return Err(JetStreamError::BatchTooLarge {
                len: pending.len(),
                max: self.config.max_batch,
            });
        }
        let mut found: Vec<Option<Appended>> = vec![None; all.len()];
        let (mut rounds, mut waits) = (0, 0);
        loop {
            if let [i] = pending[..] {
                found[i] = Some(self.publish_one(&all[i]).await?);
                break;
            }
            if pending.is_empty() {
                break;
            }
            match self.publish_atomic(pending.iter().map(|&i| &all[i])).await {
                Ok(first_offset) => {
                    for (k, &i) in pending.iter().enumerate() {
                        found[i] = Some(new_at(first_offset + k as u64));
                    }
                    break;
                }
                Err(JetStreamError::Rejected { err_code, .. })
                    if err_code == SUBJECT_IN_PROCESS && waits < IN_PROCESS_ROUNDS =>
                {
                    // Another broker is storing one of these ids: once it
                    // has, the batch is refused for holding it (below).
                    waits += 1;
                    tokio::time::sleep(IN_PROCESS_PAUSE).await;
                }
                Err(JetStreamError::Rejected { err_code, .. })
                    if err_code == WRONG_LAST_SEQUENCE && rounds < STORED_ROUNDS =>
                {
                    rounds += 1;
                    // Some ids are stored already: answer them from their
                    // last messages, then send the others as a new batch.
                    let ids: Vec<&str> = pending.iter().map(|&i| all[i].id.as_str()).collect();
                    let lasts = self.lasts_of(&ids).await?;
                    let mut rest = Vec::with_capacity(pending.len());
                    for &i in &pending {
                        match lasts.get(&all[i].id) {
                            Some(last) => found[i] = Some(last.answer(&all[i].record)?),
                            None => rest.push(i),
                        }
                    }
                    if rest.len() == pending.len() {
                        // The replica that answered lags the leader.
                        tokio::time::sleep(IN_PROCESS_PAUSE).await;
                    }
                    pending = rest;
                }
                Err(e) => return Err(e),
            }
        }
        let mut results = Vec::with_capacity(all.len());
        for (j, m) in all.iter().enumerate() {
            let i = first[m.id.as_str()];
            let original = found[i].ok_or_else(|| JetStreamError::Protocol {
                what: "atomic batch publish",
                reason: format!("event {i} of the batch got no offset"),
            })?;
            results.push(if i == j {
                original
            } else if original.duplicate {
                // A repeat of a stored id: compared with the stored event,
                // as the embedded log does.
                self.last_at(original.offset).await?.answer(&m.record)?
            } else {
                // A repeat of an event this batch wrote.
                let same = keys::same_content(&m.record, &all[i].record).map_err(|e| {
                    JetStreamError::Corrupt {
                        offset: original.offset,
                        reason: e.to_string(),
                    }
                })?;
                Appended {
                    offset: original.offset,
                    duplicate: true,
                    payload_differs: !same,
                }
            });
        }
        Ok(results)
    }

    /// The message of `event`, published at `published_at_nanos`, on its
    /// id's subject and only if that holds no message yet.
    fn outgoing(&self, event: &NewEvent, published_at_nanos: u64) -> Outgoing {
        let mut record = keys::encode_event_field(event);
        keys::encode_published_field(published_at_nanos, &mut record);
        let mut headers = event_headers(&event.event.ordering_key);
        headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        Outgoing {
            id: event.event.id.clone(),
            subject: self.config.subject(&event.event.id),
            headers,
            record: record.into(),
        }
    }

    /// A request on the stream's subjects ([`publish::request`]), sent
    /// again while another publisher's message of the same id is in flight
    /// ([`SUBJECT_IN_PROCESS`]).
    pub(super) async fn request(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
        what: &'static str,
    ) -> Result<PubAckReply, JetStreamError> {
        let mut waits = 0;
        loop {
            let ack = publish::request(
                &self.client,
                subject,
                headers.clone(),
                payload.clone(),
                what,
            )
            .await?;
            match &ack.error {
                // Another publisher's message of this id is in flight.
                Some(e) if e.err_code == SUBJECT_IN_PROCESS && waits < IN_PROCESS_ROUNDS => {
                    waits += 1;
                    tokio::time::sleep(IN_PROCESS_PAUSE).await;
                }
                _ => return Ok(ack),
            }
        }
    }

    /// Publishes one event on its id's subject; an id stored already
    /// answers from its last message (read from the leader).
    async fn publish_one(&self, m: &Outgoing) -> Result<Appended, JetStreamError> {
        const WHAT: &str = "publish";
        let mut rounds = 0;
        loop {
            let ack = self
                .request(&m.subject, m.headers.clone(), m.record.clone(), WHAT)
                .await?;
            match ack.error {
                None => return Ok(new_at(Offset::new(ack.seq))),
                Some(e) if e.err_code == WRONG_LAST_SEQUENCE => {
                    if let Some(last) = self.last_of(&m.id).await? {
                        return last.answer(&m.record);
                    }
                    // Gone since the refusal (retention purged it): the
                    // id is free again.
                    rounds += 1;
                    if rounds >= STORED_ROUNDS {
                        return Err(e.into_error(WHAT));
                    }
                }
                Some(e) => return Err(e.into_error(WHAT)),
            }
        }
    }

    /// Publishes `msgs` as one atomic batch ([`publish::atomic`]).
    async fn publish_atomic<'a>(
        &self,
        msgs: impl ExactSizeIterator<Item = &'a Outgoing>,
    ) -> Result<Offset, JetStreamError> {
        let msgs = msgs.map(|m| (m.subject.as_str(), &m.headers, &m.record));
        publish::atomic(&self.client, msgs).await
    }
}

/// The stream `wanted` names, created as `wanted` says if it does not
/// exist, and its info.
pub(super) async fn get_or_create(
    js: &jetstream::Context,
    wanted: &jetstream::stream::Config,
) -> Result<(jetstream::stream::Stream, jetstream::stream::Info), JetStreamError> {
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| request_error("stream create", e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| request_error("stream info", e))?
        .clone();
    Ok((stream, info))
}

/// A newly written event's answer.
fn new_at(offset: Offset) -> Appended {
    Appended {
        offset,
        duplicate: false,
        payload_differs: false,
    }
}
