//! What the key-value buckets of the cluster backend share: how one is
//! opened, how arbitrary strings become keys, how the client's errors are
//! typed.

use std::{fmt::Display, time::Duration};

use async_nats::{jetstream, jetstream::kv, Client};

use super::JetStreamError;

/// The bucket `name` (created R`replicas`, file storage, one revision per
/// key kept, entries expiring `max_age` after their last write, zero:
/// never), or the existing one when its settings are the same.
pub(super) async fn open(
    client: &Client,
    name: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<kv::Store, JetStreamError> {
    let js = jetstream::new(client.clone());
    let store = js
        .create_key_value(kv::Config {
            bucket: name.to_owned(),
            history: 1,
            max_age,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            let retriable = creation_may_pass(&e);
            error(name, "create bucket", e, retriable)
        })?;
    readable(&store, name).await?;
    Ok(store)
}

/// Waits until the bucket's replicas answer direct gets: a new bucket's
/// only once they have set up, and a bucket whose stream was just updated
/// only once they have set up again (until then reads fail with "no
/// responders").
async fn readable(store: &kv::Store, name: &str) -> Result<(), JetStreamError> {
    let mut last = None;
    for _ in 0..READY_ROUNDS {
        match store.get("k").await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(READY_PAUSE).await;
    }
    Err(error(
        name,
        "read bucket",
        last.map(|e| e.to_string()).unwrap_or_default(),
        true,
    ))
}

/// Whether creating a bucket failed for a reason that passes while a
/// cluster forms or heals: no answer in time, JetStream not yet up, or too
/// few of the nodes known online to place the replicas yet (err_code
/// 10005, "no suitable peers for placement"; a node that has just started
/// is offline to the meta leader for a moment).
fn creation_may_pass(e: &jetstream::context::CreateKeyValueError) -> bool {
    use jetstream::context::{
        CreateKeyValueErrorKind as Kv, CreateStreamError, CreateStreamErrorKind as S,
    };
    match e.kind() {
        Kv::TimedOut => true,
        Kv::BucketCreate => {
            let Some(stream) =
                std::error::Error::source(e).and_then(|s| s.downcast_ref::<CreateStreamError>())
            else {
                return false;
            };
            match stream.kind() {
                S::TimedOut | S::JetStreamUnavailable => true,
                S::JetStream(js) => {
                    js.code() == 503 || js.error_code() == jetstream::ErrorCode::CLUSTER_NO_PEERS
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// The bucket `name` as [`open`] makes it, its stream taking atomic
/// batches too, and its last revision. Once open, the bucket's stream
/// differs from a fresh bucket's, so it is looked up before it is created,
/// and again when another broker created it meanwhile.
pub(super) async fn open_atomic(
    client: &Client,
    name: &str,
    replicas: usize,
) -> Result<(kv::Store, u64), JetStreamError> {
    let js = jetstream::new(client.clone());
    let store = match js.get_key_value(name).await {
        Ok(store) => store,
        Err(_) => match open(client, name, replicas, Duration::ZERO).await {
            Ok(store) => store,
            Err(e) => js.get_key_value(name).await.map_err(|_| e)?,
        },
    };
    let last = allow_atomic_batches(client, name).await?;
    // Also when another broker updated the stream a moment ago.
    readable(&store, name).await?;
    Ok((store, last))
}

/// Lets the bucket's stream take atomic batches; returns its last
/// revision.
async fn allow_atomic_batches(
    client: &Client,
    name: &str,
) -> std::result::Result<u64, JetStreamError> {
    let js = jetstream::new(client.clone());
    let failed = |what, e: &dyn std::fmt::Display| error(name, what, e, true);
    let mut stream = js
        .get_stream(format!("KV_{name}"))
        .await
        .map_err(|e| failed("open bucket stream", &e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| failed("read bucket stream", &e))?
        .clone();
    if !info.config.allow_atomic_publish {
        let mut config = info.config.clone();
        config.allow_atomic_publish = true;
        js.update_stream(config)
            .await
            .map_err(|e| failed("allow atomic batches", &e))?;
    }
    Ok(info.state.last_sequence)
}

/// Looks at a new bucket until it answers reads: rounds, and the pause
/// between two.
const READY_ROUNDS: usize = 100;
const READY_PAUSE: Duration = Duration::from_millis(50);

/// Whether a bucket write failed for losing a race on its key: the key's
/// last revision is not the expected one (err_code 10071), or, in a
/// cluster, another write of the key is still in flight at the leader
/// (10164, which the client reports as "other").
pub(super) fn is_conflict(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(js) = err.downcast_ref::<jetstream::Error>() {
            let code = js.error_code();
            return code == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT;
        }
        cause = err.source();
    }
    false
}

/// A bucket error.
pub(super) fn error(
    bucket: &str,
    what: &'static str,
    e: impl Display,
    retriable: bool,
) -> JetStreamError {
    JetStreamError::Bucket {
        bucket: bucket.to_owned(),
        what,
        reason: e.to_string(),
        retriable,
    }
}

/// `id` as a key: letters, digits, `-` and `_` stay, every other byte of
/// its UTF-8 is `=XX` (upper-case hex), all behind a `k` so no key is empty
/// or starts with a dot. One-to-one, so two ids never share a key.
pub fn encode_key(id: &str) -> String {
    let mut key = String::with_capacity(id.len() + 1);
    key.push('k');
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            key.push(b as char);
        } else {
            key.push_str(&format!("={b:02X}"));
        }
    }
    key
}

/// The id [`encode_key`] made `key` from; `None` for a key it did not make.
pub fn decode_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix('k')?.as_bytes();
    let mut bytes = Vec::with_capacity(rest.len());
    let mut i = 0;
    while i < rest.len() {
        if rest[i] == b'=' {
            let hex = std::str::from_utf8(rest.get(i + 1..i + 3)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(rest[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).ok()
}

/// A bucket name of the installation named `prefix`: `<PREFIX>_<what>`,
/// as [`super::StreamConfig::with_prefix`] names the stream.
pub(super) fn name(prefix: &str, what: &str) -> String {
    format!("{}_{what}", prefix.to_ascii_uppercase())
}

/// Checks a bucket name before the server sees it.
pub(super) fn validate_name(name: &str) -> Result<(), JetStreamError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || name.len() > 250 || !name.chars().all(ok) {
        return Err(JetStreamError::Config {
            field: "bucket",
            reason: "1 to 250 letters, digits, '-' or '_'".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_one_to_one() {
        assert_eq!(encode_key(""), "k");
        assert_eq!(encode_key("evt-1_A"), "kevt-1_A");
        assert_eq!(encode_key("a.b c"), "ka=2Eb=20c");
        assert_eq!(encode_key("="), "k=3D");
        assert_eq!(encode_key("é"), "k=C3=A9");
        // The escape is escaped: "=2E" and "." differ.
        assert_ne!(encode_key("=2E"), encode_key("."));
        for id in ["", ".", "a.", "*", ">", "x y\r\n", "ü/="] {
            let key = encode_key(id);
            assert!(key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '='));
            assert!(!key.starts_with('.') && !key.ends_with('.'));
            assert_eq!(decode_key(&key).as_deref(), Some(id));
        }
    }

    #[test]
    fn foreign_keys_do_not_decode() {
        assert_eq!(decode_key("x"), None);
        assert_eq!(decode_key("k=4"), None);
        assert_eq!(decode_key("k=ZZ"), None);
        assert_eq!(decode_key("k=FF"), None);
    }

    #[test]
    fn bucket_creation_waits_out_a_forming_cluster_only() {
        use jetstream::context::{
            CreateKeyValueError, CreateKeyValueErrorKind as Kv, CreateStreamError,
        };
        let refused = |code: u16, err_code: u64| {
            let js: jetstream::Error = serde_json::from_value(serde_json::json!({
                "code": code, "err_code": err_code, "description": "d"
            }))
            .unwrap();
            CreateKeyValueError::with_source(Kv::BucketCreate, CreateStreamError::from(js))
        };
        // The refusal CI met on a cluster just started.
        assert!(creation_may_pass(&refused(400, 10005)));
        assert!(creation_may_pass(&refused(503, 10008)));
        assert!(creation_may_pass(&CreateKeyValueError::new(Kv::TimedOut)));
        // Settings the server will never take stay refusals.
        assert!(!creation_may_pass(&refused(400, 10058)));
        assert!(!creation_may_pass(&refused(400, 10023)));
        assert!(!creation_may_pass(&CreateKeyValueError::new(
            Kv::InvalidStoreName
        )));
    }

    #[test]
    fn names_take_the_installation_prefix() {
        assert_eq!(name("t1", "STATE"), "T1_STATE");
        assert!(validate_name("T1_STATE").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a.b").is_err());
    }
}
