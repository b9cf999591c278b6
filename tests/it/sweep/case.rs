//! One request of the sweep, what may come back, and the context that keeps
//! generated requests hostile (a request the server would accept is
//! defanged first).

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use prost::Message;
use rand::{rngs::StdRng, Rng, RngCore};
use stevedore::{
    config::Config,
    convert::{endpoint::endpoint_from_pb, validate_event, EventLimits},
    delivery::endpoint::EndpointSpec,
    pb,
};

use crate::support::hostile::{message, Gen};

/// Which HTTP-level answers (no `grpc-status`) a case may get: only
/// requests that are themselves not gRPC requests at the HTTP level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Http {
    /// A proper gRPC status is required.
    Never,
    /// Header block over `max_metadata_bytes`: HTTP/2 (RFC 9113 §10.5.1)
    /// answers 431 or resets the stream before any gRPC code runs.
    OversizeHeaders,
}

/// One request.
pub(super) struct Case {
    pub(super) category: &'static str,
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) body: Bytes,
    /// Read-only calls may succeed; every other call must fail.
    pub(super) may_succeed: bool,
    pub(super) http: Http,
    /// Send on a connection of its own (cases that may break one).
    pub(super) own_connection: bool,
    /// The refusal required (code, words in its message), where one is
    /// known: amplification shapes must be refused before decoding.
    pub(super) refusal: Option<(i32, &'static str)>,
}

impl Case {
    pub(super) fn grpc(category: &'static str, path: &str, body: Vec<u8>) -> Self {
        Self {
            category,
            method: Method::POST,
            may_succeed: read_only(path),
            path: path.to_string(),
            headers: Vec::new(),
            body: body.into(),
            http: Http::Never,
            own_connection: false,
            refusal: None,
        }
    }

    /// Requires the answer `code` with `words` in its message.
    pub(super) fn refused(mut self, code: tonic::Code, words: &'static str) -> Self {
        self.refusal = Some((code as i32, words));
        self
    }
}

/// What came back.
#[derive(Debug)]
pub(super) enum Outcome {
    Status(i32, String),
    Http(u16),
    Transport(String),
}

pub(super) fn read_only(path: &str) -> bool {
    path.ends_with("/GetEvent")
        || path.ends_with("/ListEndpoints")
        || path.ends_with("/GetEndpoint")
        || path.ends_with("/ListDeliveries")
        || path.ends_with("/ListAttempts")
        || path.ends_with("/ListConsumers")
        || path.ends_with("/ExplainEvent")
        || path.ends_with("/ListEventTypes")
        || path.ends_with("/GetEndpointStats")
        || path.ends_with("/RenderDelivery")
        || path.ends_with("/ListAuditRecords")
        // A generated tenant name owns nothing here: erasing it changes no
        // endpoint and no event (the checks below still hold).
        || path.ends_with("/EraseTenant")
}

/// What the sweep needs to keep its requests hostile.
pub(super) struct Ctx {
    pub(super) config: Config,
    /// (path, input message name, client streaming)
    pub(super) methods: Vec<(String, String, bool)>,
    pub(super) endpoint_ids: Vec<String>,
}

pub(super) const BAD_ID: &str = "bad\u{7}id";

impl Ctx {
    pub(super) fn limits(&self) -> EventLimits {
        EventLimits {
            max_event_bytes: self.config.max_event_bytes,
        }
    }

    pub(super) fn valid_event(&self, e: &pb::Event) -> bool {
        validate_event(
            e.clone(),
            &"event",
            std::time::SystemTime::now(),
            self.limits(),
        )
        .is_ok()
    }

    /// Whether the broker would accept `e` as a new endpoint's settings
    /// (the API's path: into the domain, then validation).
    pub(super) fn valid_endpoint(&self, e: &pb::Endpoint) -> bool {
        endpoint_from_pb(e.clone())
            .and_then(|e| EndpointSpec::validate(&e, &self.config))
            .is_ok()
    }

    /// Makes sure `msg`, if it decodes as `path`'s request, cannot change
    /// anything: a request the server would accept is made invalid. The
    /// bytes are kept as they are whenever they are hostile already.
    pub(super) fn defang(&self, path: &str, msg: Vec<u8>) -> Vec<u8> {
        let method = path.rsplit('/').next().unwrap_or_default();
        match method {
            "Publish" | "PublishStream" => match pb::PublishRequest::decode(msg.as_slice()) {
                Ok(mut r) if r.event.as_ref().is_some_and(|e| self.valid_event(e)) => {
                    r.event.as_mut().unwrap().id = BAD_ID.into();
                    r.encode_to_vec()
                }
                _ => msg,
            },
            "PublishBatch" => match pb::PublishBatchRequest::decode(msg.as_slice()) {
                Ok(mut r)
                    if !r.events.is_empty()
                        && r.events.len() <= self.config.max_batch_events
                        && r.events.iter().all(|e| self.valid_event(e)) =>
                {
                    r.events[0].id = BAD_ID.into();
                    r.encode_to_vec()
                }
                _ => msg,
            },
            // Any decodable Subscribe could start a stream or create a
            // durable consumer: give it an unknown ack mode, checked first.
            "Subscribe" => match pb::SubscribeRequest::decode(msg.as_slice()) {
                Ok(mut r) if pb::AckMode::try_from(r.ack_mode).is_ok() => {
                    r.ack_mode = 99;
                    r.encode_to_vec()
                }
                _ => msg,
            },
            "CreateEndpoint" => match pb::CreateEndpointRequest::decode(msg.as_slice()) {
                Ok(mut r) if r.endpoint.as_ref().is_some_and(|e| self.valid_endpoint(e)) => {
                    r.endpoint.as_mut().unwrap().url = "ftp://defanged/".into();
                    r.encode_to_vec()
                }
                _ => msg,
            },
            // Ids are ULIDs; random ones never name an existing endpoint or
            // consumer (this sweep creates no consumers), so these fail with
            // NOT_FOUND or INVALID_ARGUMENT. Checked anyway:
            _ => {
                assert!(
                    !self
                        .endpoint_ids
                        .iter()
                        .any(|id| msg.windows(id.len()).any(|w| w == id.as_bytes())),
                    "a random request named a real endpoint"
                );
                msg
            }
        }
    }

    /// A structure-aware random request for `path`, defanged.
    pub(super) fn generated(&self, rng: &mut StdRng, path: &str, input: &str) -> Vec<u8> {
        let tape = random_bytes(rng, 4096);
        let msg = Gen::new(&tape).message(&message(input), 5).encode_to_vec();
        self.defang(path, msg)
    }
}

pub(super) fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let mut v = vec![0u8; rng.random_range(0..max)];
    rng.fill_bytes(&mut v);
    v
}
