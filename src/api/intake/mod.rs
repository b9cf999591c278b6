//! Request intake: memory is bounded before anything is decoded.
//!
//! A tower layer in front of every gRPC service reads each request message's
//! gRPC length prefix and, before tonic buffers or prost decodes it:
//!
//! 1. refuses a message longer than its method needs: `OUT_OF_RANGE`, like
//!    tonic's own limit (a `Publish` or `PublishStream` message under
//!    `max_request_bytes` carries an event over `max_event_bytes`:
//!    `INVALID_ARGUMENT` on `event`, as validation would say);
//! 2. reserves its bytes from the broker-wide in-flight budget
//!    (`max_inflight_request_bytes`; `RESOURCE_EXHAUSTED` when full);
//! 3. once the message is complete, walks its protobuf wire format against
//!    the method's schema — tags and lengths only, no allocation — counting
//!    repeated elements (events in a batch, attribute entries) and
//!    estimating what prost would allocate; too many elements is
//!    `INVALID_ARGUMENT` naming the field, an estimate over
//!    `max_decoded_request_bytes` is `RESOURCE_EXHAUSTED`; the estimate is
//!    reserved from the in-flight budget too.
//!
//! Reservations of a unary request are held until its response is ready
//! (the decoded request is dropped by then); a client stream holds only its
//! latest message's.
//!
//! Here: the request schemas and budgets ([`Intake`]); `layer.rs`: the tower
//! layer and the request body it wraps; `scan.rs`: the wire-format walk.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use prost::Message;
use prost_types::{field_descriptor_proto::Label, field_descriptor_proto::Type};
use tonic::Status;

use crate::{config::Config, metrics::Metrics};

mod layer;
mod scan;

pub use layer::{IntakeLayer, IntakeService};

/// Largest message of any method not listed in [`Intake::new`] (health,
/// reflection, most unary calls): their requests are a few ids.
const SMALL_REQUEST_BYTES: usize = 64 * 1024;
/// `CreateEndpoint` and `UpdateEndpoint`: an endpoint with every bound at
/// its maximum (URL, headers, filters, field lists) is well under this.
const ENDPOINT_REQUEST_BYTES: usize = 1024 * 1024;
/// prost's recursion limit: deeper messages fail to decode anyway.
const MAX_DEPTH: u32 = 100;

/// The broker-wide in-flight request-bytes budget.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    used: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// Bytes taken from the [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Budget {
    /// A budget of `max` bytes.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Takes `bytes`, or `None` if that would pass the budget.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|n| *n <= self.max)
            })
            .ok()?;
        self.metrics
            .request_bytes_in_flight
            .fetch_add(bytes as i64, Ordering::Relaxed);
        Some(Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget
            .metrics
            .request_bytes_in_flight
            .fetch_sub(self.bytes as i64, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Varint,
    Fixed64,
    Fixed32,
    /// `string` and `bytes`.
    Bytes,
    Message(usize),
    Map(usize),
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    kind: Kind,
    repeated: bool,
    /// Most elements one message may carry in this field, counted on the
    /// wire, with the refusal's wording.
    count_limit: Option<(usize, CountRule)>,
}

#[derive(Debug, Clone, Copy)]
enum CountRule {
    /// `"{n} events exceed max_batch_events ({max})"`, as the service says.
    BatchEvents,
    /// `"at most {max} attributes"`, as event validation says.
    Attributes,
}

/// A map keyed by protobuf field number, hashed by one multiply: the scan
/// looks a field up for every field of every message it walks, so the
/// hash is on the hot path of every publish. The keys are small integers
/// from our own schema, not attacker-chosen, so SipHash's protection
/// against flooding buys nothing here (figures in BENCHMARKS.md, "Notes
/// moved from code").
type ByNumber<V> = HashMap<u32, V, std::hash::BuildHasherDefault<NumberHasher>>;

#[derive(Default)]
struct NumberHasher(u64);

impl std::hash::Hasher for NumberHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug, Default)]
struct Shape {
    name: String,
    fields: ByNumber<Field>,
    /// Estimated size of the Rust struct prost decodes this into.
    inline: usize,
}

/// One gRPC method's intake rules.
#[derive(Debug, Clone)]
struct Method {
    input: Option<usize>,
    client_streaming: bool,
    max_bytes: usize,
    /// The config key (or rule) that sets `max_bytes`, for the refusal.
    why: &'static str,
    /// `Publish` and `PublishStream`: a message too long for its method is
    /// an event over this `max_event_bytes` (INVALID_ARGUMENT on `event`,
    /// as validation says it) unless it is over `max_request_bytes` too.
    event_bytes: Option<usize>,
}

/// The schema of every stevedore request and the budgets; shared by every
/// connection's [`IntakeService`].
#[derive(Debug)]
pub struct Intake {
    shapes: Vec<Shape>,
    methods: HashMap<String, Method>,
    budget: Arc<Budget>,
    max_decoded: usize,
    max_request_bytes: usize,
    metrics: Arc<Metrics>,
}

impl Intake {
    /// Reads the request schemas from the compiled descriptor set and sizes
    /// each method's limit from `config`.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let fds = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)?;
        let mut index = HashMap::new();
        let mut protos = Vec::new();
        for file in &fds.file {
            let prefix = match file.package() {
                "" => String::new(),
                p => format!(".{p}"),
            };
            let mut stack: Vec<(String, &prost_types::DescriptorProto)> = file
                .message_type
                .iter()
                .map(|m| (format!("{prefix}.{}", m.name()), m))
                .collect();
            while let Some((name, m)) = stack.pop() {
                for nested in &m.nested_type {
                    stack.push((format!("{name}.{}", nested.name()), nested));
                }
                index.insert(name.clone(), protos.len());
                protos.push((name, m));
            }
        }
        let mut shapes: Vec<Shape> = Vec::with_capacity(protos.len());
        for (name, m) in &protos {
            let mut shape = Shape {
                name: name.trim_start_matches('.').to_owned(),
                ..Shape::default()
            };
            for f in &m.field {
                let kind = match f.r#type() {
                    Type::Double | Type::Fixed64 | Type::Sfixed64 => Kind::Fixed64,
                    Type::Float | Type::Fixed32 | Type::Sfixed32 => Kind::Fixed32,
                    Type::String | Type::Bytes => Kind::Bytes,
                    Type::Message | Type::Group => {
                        let i = *index.get(f.type_name()).ok_or_else(|| {
                            anyhow::anyhow!("descriptor: {} is not in the set", f.type_name())
                        })?;
                        let map = protos[i].1.options.as_ref().is_some_and(|o| o.map_entry());
                        if map {
                            Kind::Map(i)
                        } else {
                            Kind::Message(i)
                        }
                    }
                    _ => Kind::Varint,
                };
                let repeated = f.label() == Label::Repeated;
                let count_limit = match (shape.name.as_str(), f.name()) {
                    ("stevedore.v1.PublishBatchRequest", "events") => {
                        Some((config.max_batch_events, CountRule::BatchEvents))
                    }
                    ("stevedore.v1.Event", "attributes") => {
                        Some((crate::convert::MAX_ATTRIBUTES, CountRule::Attributes))
                    }
                    _ => None,
                };
                shape.fields.insert(
                    f.number() as u32,
                    Field {
                        name: f.name().to_owned(),
                        kind,
                        repeated,
                        count_limit,
                    },
                );
            }
            shapes.push(shape);
        }
        let mut sizes = vec![None; protos.len()];
        for (i, shape) in shapes.iter_mut().enumerate() {
            shape.inline = inline_size(&protos, &index, i, &mut sizes, &mut Vec::new());
        }

        let cap = |n: usize| n.min(config.max_request_bytes);
        let mut methods = HashMap::new();
        for file in &fds.file {
            if file.package() != "stevedore.v1" {
                continue;
            }
            for service in &file.service {
                for m in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), m.name());
                    let (max_bytes, why) = match (service.name(), m.name()) {
                        ("Publisher", "PublishBatch") => {
                            (config.max_request_bytes, "max_request_bytes")
                        }
                        ("Publisher", _) => (
                            cap(config.max_event_bytes + 1024),
                            "max_event_bytes + 1 KiB",
                        ),
                        ("Admin", "CreateEndpoint" | "UpdateEndpoint") => {
                            (cap(ENDPOINT_REQUEST_BYTES), "fixed: 1 MiB")
                        }
                        ("Subscriber", "Ack" | "Nack") => (
                            cap(SMALL_REQUEST_BYTES
                                + 11 * config.max_in_flight_limit.get() as usize),
                            "64 KiB + 11 bytes per max_in_flight_limit",
                        ),
                        _ => (cap(SMALL_REQUEST_BYTES), "fixed: 64 KiB"),
                    };
                    let event_bytes = (service.name() == "Publisher" && m.name() != "PublishBatch")
                        .then_some(config.max_event_bytes);
                    methods.insert(
                        path,
                        Method {
                            input: index.get(m.input_type()).copied(),
                            client_streaming: m.client_streaming(),
                            max_bytes,
                            why,
                            event_bytes,
                        },
                    );
                }
            }
        }
        Ok(Arc::new(Self {
            shapes,
            methods,
            budget: Budget::new(config.max_inflight_request_bytes, metrics.clone()),
            max_decoded: config.max_decoded_request_bytes,
            max_request_bytes: config.max_request_bytes,
            metrics,
        }))
    }

    /// The in-flight budget.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    fn method(&self, path: &str) -> Method {
        self.methods.get(path).cloned().unwrap_or(Method {
            // Health, reflection, unknown paths: small requests, no
            // repeated fields to amplify (or UNIMPLEMENTED anyway).
            input: None,
            client_streaming: true,
            max_bytes: SMALL_REQUEST_BYTES,
            why: "fixed: 64 KiB",
            event_bytes: None,
        })
    }

    fn refused(&self, reason: &str, status: Status) -> Status {
        self.metrics.requests_refused.add(&[reason], 1);
        status
    }
}

/// Estimated size of message `i`'s Rust struct: 24 bytes for a `String`,
/// `Vec` or `Option<scalar>`, 48 for a map, the nested struct for a
/// singular message (8 if recursive, prost boxes those), the largest
/// variant for a `oneof`, plus 8 per field for padding.
fn inline_size(
    protos: &[(String, &prost_types::DescriptorProto)],
    index: &HashMap<String, usize>,
    i: usize,
    memo: &mut Vec<Option<usize>>,
    visiting: &mut Vec<usize>,
) -> usize {
    if let Some(n) = memo[i] {
        return n;
    }
    if visiting.contains(&i) {
        return 8;
    }
    visiting.push(i);
    let m = protos[i].1;
    let mut oneofs: HashMap<i32, usize> = HashMap::new();
    let mut total = 16;
    for f in &m.field {
        let size = if f.label() == Label::Repeated {
            let map = index
                .get(f.type_name())
                .is_some_and(|j| protos[*j].1.options.as_ref().is_some_and(|o| o.map_entry()));
            if map {
                48
            } else {
                24
            }
        } else {
            match f.r#type() {
                Type::Message | Type::Group => match index.get(f.type_name()) {
                    Some(j) => 8 + inline_size(protos, index, *j, memo, visiting),
                    None => 8,
                },
                _ => 24,
            }
        } + 8;
        match f.oneof_index {
            Some(o) if !f.proto3_optional() => {
                let e = oneofs.entry(o).or_default();
                *e = (*e).max(size);
            }
            _ => total += size,
        }
    }
    total += oneofs.values().map(|v| v + 16).sum::<usize>();
    visiting.pop();
    memo[i] = Some(total);
    total
}

#[cfg(test)]
mod tests;
