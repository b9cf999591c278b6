//! How an endpoint is stored: its configuration (in the encoding of
//! `stored.rs`, not the public `Endpoint` message) beside its secrets,
//! sealed with the master key when one is configured; its signing keys;
//! the offline reseal of records stored in the clear.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, SystemTime},
};

use prost::Message;

use super::stored::{endpoint_from_stored, endpoint_to_stored, StoredEndpoint, Unread};
use crate::{
    delivery::{
        request::Keys,
        sealing::{MasterKey, Sealed},
        signing::Secret,
        REDACTED,
    },
    error::{Error, Result},
    model::endpoint::Endpoint,
};

/// An endpoint's record, open (secrets in the clear), as the broker holds
/// it in memory. Its `Debug` shows no secret and no header value.
#[derive(Clone, PartialEq, Default)]
pub struct EndpointRecord {
    /// The endpoint as configured (validated), with id and times.
    pub endpoint: Endpoint,
    /// The current signing key.
    pub secret: Vec<u8>,
    /// The rotated-out key, signing until `previous_expires_nanos`.
    pub previous_secret: Vec<u8>,
    /// Unix nanoseconds.
    pub previous_expires_nanos: u64,
    /// On disk with a master key: the sealed `RecordSecrets`. Always
    /// `None` in memory.
    pub sealed: Option<Sealed>,
    /// What the stored record holds that the broker does not read, written
    /// back as it was (default for new records).
    pub unread: Unread,
}

/// An [`EndpointRecord`] as stored (the field numbers of the first
/// versions, which stored the public `Endpoint` message at number 1).
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub(super) struct StoredRecord {
    /// The endpoint's configuration.
    #[prost(message, optional, tag = "1")]
    pub endpoint: Option<StoredEndpoint>,
    /// The current signing key (empty when sealed).
    #[prost(bytes = "vec", tag = "2")]
    pub secret: Vec<u8>,
    /// The rotated-out key (empty when sealed).
    #[prost(bytes = "vec", tag = "3")]
    pub previous_secret: Vec<u8>,
    /// Unix nanoseconds.
    #[prost(uint64, tag = "4")]
    pub previous_expires_nanos: u64,
    /// With a master key: the sealed `RecordSecrets`. `secret`,
    /// `previous_secret`, `endpoint.headers`, `endpoint.client_key_pem`
    /// and the OAuth2 client secret are then stored empty.
    #[prost(message, optional, tag = "5")]
    pub sealed: Option<Sealed>,
}

/// What a master key seals: everything secret in an [`EndpointRecord`].
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
struct RecordSecrets {
    #[prost(bytes = "vec", tag = "1")]
    secret: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    previous_secret: Vec<u8>,
    #[prost(map = "string, string", tag = "3")]
    headers: HashMap<String, String>,
    /// #19: the endpoint's TLS client key.
    #[prost(string, tag = "4")]
    client_key_pem: String,
    /// #19: the endpoint's OAuth2 client secret.
    #[prost(string, tag = "5")]
    oauth2_client_secret: String,
}

impl EndpointRecord {
    /// The bytes to store: sealed under `key` when there is one.
    pub fn to_stored(&self, key: Option<&MasterKey>) -> Vec<u8> {
        let mut stored = StoredRecord {
            endpoint: Some(endpoint_to_stored(&self.endpoint, &self.unread)),
            secret: self.secret.clone(),
            previous_secret: self.previous_secret.clone(),
            previous_expires_nanos: self.previous_expires_nanos,
            sealed: None,
        };
        let Some(key) = key else {
            return stored.encode_to_vec();
        };
        let endpoint = stored.endpoint.as_mut().expect("records have an endpoint");
        let secrets = RecordSecrets {
            secret: std::mem::take(&mut stored.secret),
            previous_secret: std::mem::take(&mut stored.previous_secret),
            headers: std::mem::take(&mut endpoint.headers),
            client_key_pem: std::mem::take(&mut endpoint.client_key_pem),
            oauth2_client_secret: endpoint
                .oauth2
                .as_mut()
                .map(|o| std::mem::take(&mut o.client_secret))
                .unwrap_or_default(),
        };
        let sealed = key.seal(&endpoint.id, &secrets.encode_to_vec());
        stored.sealed = Some(sealed);
        stored.encode_to_vec()
    }

    /// Decodes stored bytes and opens sealed secrets with `key`. A sealed
    /// record without the key, or with another key, is an
    /// [`Error::MasterKey`] that names the setting to fix.
    pub fn from_stored(bytes: &[u8], key: Option<&MasterKey>) -> Result<Self> {
        let mut r =
            StoredRecord::decode(bytes).map_err(|e| Error::Corrupt(format!("endpoint: {e}")))?;
        let Some(endpoint) = r.endpoint.as_mut() else {
            return Err(Error::Corrupt("endpoint record without endpoint".into()));
        };
        let Some(sealed) = r.sealed.take() else {
            return Self::opened(r);
        };
        let id = &endpoint.id;
        let key = key.ok_or_else(|| {
            Error::MasterKey(format!(
                "endpoint {id}: its secrets are encrypted at rest but no master key is configured; \
                 set master_key_file (or STEVEDORE_MASTER_KEY) to the key that encrypted them"
            ))
        })?;
        let plain = key.open(id, &sealed).ok_or_else(|| {
            Error::MasterKey(format!(
                "endpoint {id}: its secrets cannot be decrypted with the configured master key \
                 (master_key_file / STEVEDORE_MASTER_KEY): they were encrypted with a different key, \
                 or the record is damaged"
            ))
        })?;
        let secrets = RecordSecrets::decode(&*plain)
            .map_err(|e| Error::Corrupt(format!("endpoint {id}: sealed secrets: {e}")))?;
        r.secret = secrets.secret;
        r.previous_secret = secrets.previous_secret;
        endpoint.headers = secrets.headers;
        endpoint.client_key_pem = secrets.client_key_pem;
        if let Some(o) = endpoint.oauth2.as_mut() {
            o.client_secret = secrets.oauth2_client_secret;
        }
        Self::opened(r)
    }

    /// The record `r` holds, its secrets already opened.
    fn opened(r: StoredRecord) -> Result<Self> {
        let stored = r.endpoint.expect("checked by from_stored");
        let (endpoint, unread) = endpoint_from_stored(stored)?;
        Ok(Self {
            endpoint,
            secret: r.secret,
            previous_secret: r.previous_secret,
            previous_expires_nanos: r.previous_expires_nanos,
            sealed: None,
            unread,
        })
    }

    /// Whether stored bytes hold sealed secrets (written with a master
    /// key). Undecodable bytes count as sealed: there is nothing to migrate.
    pub fn is_sealed(bytes: &[u8]) -> bool {
        StoredRecord::decode(bytes).map_or(true, |r| r.sealed.is_some())
    }
}

impl fmt::Debug for EndpointRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The endpoint's own Debug redacts its secrets.
        let redacted = |s: &[u8]| if s.is_empty() { "" } else { REDACTED };
        f.debug_struct("EndpointRecord")
            .field("endpoint", &self.endpoint)
            .field("secret", &redacted(&self.secret))
            .field("previous_secret", &redacted(&self.previous_secret))
            .field("previous_expires_nanos", &self.previous_expires_nanos)
            .field("sealed", &self.sealed.is_some())
            .finish()
    }
}

/// Unix nanoseconds as a time.
pub fn from_nanos(n: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_nanos(n)
}

impl EndpointRecord {
    /// The signing keys: the current secret, and the rotated-out one with
    /// the time it stops signing.
    pub fn keys(&self) -> Keys {
        Keys {
            current: Secret::from_bytes(self.secret.clone()),
            previous: (!self.previous_secret.is_empty()).then(|| {
                (
                    Secret::from_bytes(self.previous_secret.clone()),
                    from_nanos(self.previous_expires_nanos),
                )
            }),
        }
    }
}

/// For `stevedore reseal`: a stored endpoint record in the clear, sealed
/// with `key` (`None`: already sealed). A sealed record must open with
/// `key`, or the whole reseal stops before anything changes.
pub fn reseal_value(value: &[u8], key: &MasterKey) -> Result<Option<Vec<u8>>> {
    if EndpointRecord::is_sealed(value) {
        EndpointRecord::from_stored(value, Some(key))?;
        return Ok(None);
    }
    Ok(Some(
        EndpointRecord::from_stored(value, None)?.to_stored(Some(key)),
    ))
}
