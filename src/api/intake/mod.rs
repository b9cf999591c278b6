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

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame};
use prost::Message;
use prost_types::{field_descriptor_proto::Label, field_descriptor_proto::Type};
use tonic::{body::Body, Status};

use crate::{config::Config, error::Error, metrics::Metrics};

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
/// looks a field up for every field of every message it walks. With the
/// default SipHash, PublishStream ran 12-18 % slower (BENCHMARKS.md).
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

    /// Walks one encoded message of type `shape`: `Ok(estimated decoded
    /// bytes)`, or the refusal.
    fn scan(&self, shape: usize, bytes: &[u8]) -> Result<usize, Status> {
        let mut scan = Scan {
            intake: self,
            cost: 0,
            path: Vec::new(),
        };
        scan.message(shape, bytes, 0)?;
        Ok(scan.cost)
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

struct Scan<'a> {
    intake: &'a Intake,
    cost: usize,
    /// (shape, field number, element index) from the request down, for the
    /// refusal's field path.
    path: Vec<(usize, u32, Option<usize>)>,
}

fn malformed(why: &str) -> Status {
    // The code and wording tonic gives a message prost cannot decode.
    Status::internal(format!("failed to decode Protobuf message: {why}"))
}

fn varint(buf: &mut &[u8]) -> Result<u64, Status> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(malformed("truncated varint"));
        };
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(malformed("invalid varint"))
}

fn take<'b>(buf: &mut &'b [u8], n: u64) -> Result<&'b [u8], Status> {
    let n = usize::try_from(n).map_err(|_| malformed("length out of range"))?;
    if buf.len() < n {
        return Err(malformed("buffer underflow"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Skips one field's value of wire type `wire` (groups included, as prost
/// skips unknown fields).
fn skip(buf: &mut &[u8], wire: u64, field: u64, depth: u32) -> Result<(), Status> {
    match wire {
        0 => varint(buf).map(drop),
        1 => take(buf, 8).map(drop),
        2 => {
            let n = varint(buf)?;
            take(buf, n).map(drop)
        }
        3 => {
            if depth >= MAX_DEPTH {
                return Err(malformed("recursion limit reached"));
            }
            loop {
                let key = varint(buf)?;
                let (f, w) = (key >> 3, key & 7);
                if w == 4 {
                    return if f == field {
                        Ok(())
                    } else {
                        Err(malformed("unexpected end group tag"))
                    };
                }
                skip(buf, w, f, depth + 1)?;
            }
        }
        5 => take(buf, 4).map(drop),
        _ => Err(malformed("invalid wire type")),
    }
}

impl Scan<'_> {
    fn add(&mut self, n: usize) -> Result<(), Status> {
        self.cost = self.cost.saturating_add(n);
        if self.cost > self.intake.max_decoded {
            let max = self.intake.max_decoded;
            return Err(self.intake.refused(
                "decode_budget",
                Status::resource_exhausted(format!(
                    "the request would take more than max_decoded_request_bytes ({max}) \
                     once decoded; send less per request"
                )),
            ));
        }
        Ok(())
    }

    fn field_path(&self) -> String {
        let mut out = String::new();
        for &(shape, number, element) in &self.path {
            if !out.is_empty() {
                out.push('.');
            }
            match self.intake.shapes[shape].fields.get(&number) {
                Some(f) => out.push_str(&f.name),
                None => out.push_str(&number.to_string()),
            }
            if let Some(i) = element {
                out.push_str(&format!("[{i}]"));
            }
        }
        out
    }

    fn message(&mut self, shape: usize, mut buf: &[u8], depth: u32) -> Result<(), Status> {
        if depth > MAX_DEPTH {
            return Err(malformed("recursion limit reached"));
        }
        let intake = self.intake;
        let fields = &intake.shapes[shape].fields;
        // Elements seen per repeated field of this message (few: a list).
        let mut counts: Vec<(u32, usize)> = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            let (number, wire) = (key >> 3, key & 7);
            if number == 0 || number > u64::from(u32::MAX >> 3) {
                return Err(malformed("invalid tag"));
            }
            let number = number as u32;
            let Some(field) = fields.get(&number) else {
                skip(&mut buf, wire, u64::from(number), depth)?;
                continue;
            };
            let element = if field.repeated {
                let n = match counts.iter().position(|(f, _)| *f == number) {
                    Some(i) => &mut counts[i].1,
                    None => {
                        counts.push((number, 0));
                        &mut counts.last_mut().expect("just pushed").1
                    }
                };
                *n += 1;
                if let Some((max, rule)) = field.count_limit {
                    if *n > max {
                        // Refused before the elements are charged: count the
                        // rest (skipping only) so the refusal says how many.
                        let total = *n + count_rest(buf, number, wire, depth)?;
                        return Err(self.too_many(shape, number, total, max, rule));
                    }
                }
                Some(*n - 1)
            } else {
                None
            };
            // Vec growth: a repeated field's buffer may be twice its length.
            let grow = if field.repeated { 2 } else { 1 };
            match (field.kind, wire) {
                (Kind::Varint, 0) => {
                    varint(&mut buf)?;
                    self.add(8 * grow)?;
                }
                (Kind::Fixed64, 1) => {
                    take(&mut buf, 8)?;
                    self.add(8 * grow)?;
                }
                (Kind::Fixed32, 5) => {
                    take(&mut buf, 4)?;
                    self.add(8 * grow)?;
                }
                // Packed repeated scalars: at most one element per byte.
                (Kind::Varint | Kind::Fixed64 | Kind::Fixed32, 2) if field.repeated => {
                    let n = varint(&mut buf)?;
                    let body = take(&mut buf, n)?;
                    self.add(body.len().saturating_mul(16))?;
                }
                (Kind::Bytes, 2) => {
                    let n = varint(&mut buf)?;
                    let body = take(&mut buf, n)?;
                    self.add(body.len() + if field.repeated { 48 } else { 0 })?;
                }
                (Kind::Message(inner), 2) => {
                    let n = varint(&mut buf)?;
                    let body = take(&mut buf, n)?;
                    if field.repeated {
                        self.add(2 * intake.shapes[inner].inline)?;
                    }
                    self.path.push((shape, number, element));
                    self.message(inner, body, depth + 1)?;
                    self.path.pop();
                }
                (Kind::Map(entry), 2) => {
                    let n = varint(&mut buf)?;
                    let body = take(&mut buf, n)?;
                    // Entries in a hash table that may be half empty.
                    self.add(2 * intake.shapes[entry].inline)?;
                    self.path.push((shape, number, None));
                    self.message(entry, body, depth + 1)?;
                    self.path.pop();
                }
                _ => return Err(malformed("invalid wire type")),
            }
        }
        Ok(())
    }

    fn too_many(
        &mut self,
        shape: usize,
        number: u32,
        n: usize,
        max: usize,
        rule: CountRule,
    ) -> Status {
        self.path.push((shape, number, None));
        let path = self.field_path();
        self.path.pop();
        let message = match rule {
            CountRule::BatchEvents => format!("{n} events exceed max_batch_events ({max})"),
            CountRule::Attributes => format!("at most {max} attributes"),
        };
        self.intake
            .refused("count", Error::invalid(path, message).into())
    }
}

/// Occurrences of field `number` in the rest of a message (`buf` is at the
/// value of one, of wire type `wire`), skipping values.
fn count_rest(mut buf: &[u8], number: u32, wire: u64, depth: u32) -> Result<usize, Status> {
    skip(&mut buf, wire, u64::from(number), depth)?;
    let mut n = 0;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (f, wire) = (key >> 3, key & 7);
        if f == u64::from(number) {
            n += 1;
        }
        skip(&mut buf, wire, f, depth)?;
    }
    Ok(n)
}

/// The layer: put it in front of the gRPC services.
#[derive(Debug, Clone)]
pub struct IntakeLayer(Arc<Intake>);

impl IntakeLayer {
    /// A layer applying `intake`'s rules.
    pub fn new(intake: Arc<Intake>) -> Self {
        Self(intake)
    }
}

impl<S> tower::Layer<S> for IntakeLayer {
    type Service = IntakeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IntakeService {
            inner,
            intake: self.0.clone(),
        }
    }
}

/// See [`IntakeLayer`].
#[derive(Debug, Clone)]
pub struct IntakeService<S> {
    inner: S,
    intake: Arc<Intake>,
}

type Held = Arc<Mutex<Vec<Reservation>>>;

impl<S, ResBody> tower::Service<http::Request<Body>> for IntakeService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = self.intake.method(req.uri().path());
        let held: Held = Arc::default();
        let (parts, body) = req.into_parts();
        let body = Body::new(IntakeBody {
            inner: body,
            intake: self.intake.clone(),
            method,
            buf: BytesMut::new(),
            header: None,
            ready: VecDeque::new(),
            held: held.clone(),
            failed: false,
        });
        let fut = self.inner.call(http::Request::from_parts(parts, body));
        Box::pin(async move {
            let out = fut.await;
            // A unary request is decoded and dropped by now.
            drop(held);
            out
        })
    }
}

struct IntakeBody {
    inner: Body,
    intake: Arc<Intake>,
    method: Method,
    /// The message being received, its 5-byte prefix first.
    buf: BytesMut,
    /// (compressed, length) of the message being received.
    header: Option<(bool, usize)>,
    /// Checked messages not yet handed on.
    ready: VecDeque<Bytes>,
    held: Held,
    failed: bool,
}

impl IntakeBody {
    fn hold(&self, r: Reservation) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    /// Moves complete, checked messages from `buf` to `ready`.
    fn process(&mut self) -> Result<(), Status> {
        loop {
            let (compressed, len) = match self.header {
                Some(h) => h,
                None => {
                    if self.buf.len() < 5 {
                        return Ok(());
                    }
                    let compressed = self.buf[0] != 0;
                    let len =
                        u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                            as usize;
                    let m = &self.method;
                    if let Some(max) = m
                        .event_bytes
                        .filter(|_| len > m.max_bytes && len <= self.intake.max_request_bytes)
                    {
                        let why = format!(
                            "the request is {len} bytes: its event exceeds \
                             max_event_bytes ({max}); refused before decoding"
                        );
                        return Err(self
                            .intake
                            .refused("message_size", Error::invalid("event", why).into()));
                    }
                    if len > m.max_bytes {
                        return Err(self.intake.refused(
                            "message_size",
                            Status::out_of_range(format!(
                                "decoded message length too large: found {len} bytes, \
                                 the limit for this method is {} ({})",
                                m.max_bytes, m.why
                            )),
                        ));
                    }
                    if self.method.client_streaming {
                        // A stream holds its latest message only.
                        self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    }
                    let r = self.intake.budget.try_reserve(len + 5).ok_or_else(|| {
                        self.intake.refused(
                            "inflight_budget",
                            Status::resource_exhausted(format!(
                                "the broker already holds max_inflight_request_bytes ({}) \
                                 of requests; retry later",
                                self.intake.budget.max
                            )),
                        )
                    })?;
                    self.hold(r);
                    self.buf.reserve((len + 5).saturating_sub(self.buf.len()));
                    self.header = Some((compressed, len));
                    (compressed, len)
                }
            };
            if self.buf.len() < len + 5 {
                return Ok(());
            }
            let message = self.buf.split_to(len + 5).freeze();
            self.header = None;
            if let (false, Some(shape)) = (compressed, self.method.input) {
                let estimate = self.intake.scan(shape, &message[5..])?;
                let r = self.intake.budget.try_reserve(estimate).ok_or_else(|| {
                    self.intake.refused(
                        "inflight_budget",
                        Status::resource_exhausted(format!(
                            "the broker already holds max_inflight_request_bytes ({}) \
                             of requests; retry later",
                            self.intake.budget.max
                        )),
                    )
                })?;
                self.hold(r);
            }
            // Compressed messages go on unchecked: the server accepts no
            // compression, so tonic refuses them without decoding.
            self.ready.push_back(message);
        }
    }
}

impl HttpBody for IntakeBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.failed {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // A cut-off message goes on as it is: tonic reports the
                    // broken framing.
                    if this.buf.has_remaining() {
                        let rest = this.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.buf.extend_from_slice(&data);
                        if let Err(status) = this.process() {
                            this.failed = true;
                            this.buf = BytesMut::new();
                            return Poll::Ready(Some(Err(status)));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.buf.is_empty() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intake() -> Arc<Intake> {
        Intake::new(&Config::default(), Arc::default()).unwrap()
    }

    fn shape(intake: &Intake, name: &str) -> usize {
        intake
            .shapes
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} not in the schema"))
    }

    /// The estimate of a struct is at least what Rust lays out, so the
    /// decode budget does not undercount.
    #[test]
    fn inline_estimates_cover_the_real_structs() {
        let i = intake();
        for (name, real) in [
            (
                "stevedore.v1.Event",
                std::mem::size_of::<crate::pb::Event>(),
            ),
            (
                "stevedore.v1.ShipmentDetail",
                std::mem::size_of::<crate::pb::ShipmentDetail>(),
            ),
            (
                "stevedore.v1.PickLine",
                std::mem::size_of::<crate::pb::PickLine>(),
            ),
            (
                "stevedore.v1.Endpoint",
                std::mem::size_of::<crate::pb::Endpoint>(),
            ),
            (
                "google.protobuf.Value",
                std::mem::size_of::<prost_types::Value>(),
            ),
        ] {
            let est = i.shapes[shape(&i, name)].inline;
            assert!(est >= real, "{name}: estimate {est} < size_of {real}");
        }
    }

    #[test]
    fn every_method_has_its_input_schema() {
        let i = intake();
        assert!(i.methods.len() >= 18, "{}", i.methods.len());
        for (path, m) in &i.methods {
            assert!(m.input.is_some(), "{path}");
        }
    }

    #[test]
    fn empty_events_are_counted_without_decoding() {
        let i = intake();
        let batch = shape(&i, "stevedore.v1.PublishBatchRequest");
        let wire = [0x0a, 0x00].repeat(10_001);
        let err = i.scan(batch, &wire).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .contains("events: 10001 events exceed max_batch_events (10000)"),
            "{}",
            err.message()
        );
        // Under the count, the estimate is charged per element.
        let est = i.scan(batch, &[0x0a, 0x00].repeat(100)).unwrap();
        assert!(est >= 100 * std::mem::size_of::<crate::pb::Event>());
    }

    #[test]
    fn attribute_floods_name_the_field() {
        let i = intake();
        let batch = shape(&i, "stevedore.v1.PublishBatchRequest");
        let mut event = crate::pb::Event::default();
        for k in 0..65 {
            event.attributes.insert(format!("k{k}"), String::new());
        }
        let req = crate::pb::PublishBatchRequest {
            events: vec![crate::pb::Event::default(), event],
        };
        let err = i.scan(batch, &req.encode_to_vec()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("events[1].attributes"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn the_decode_budget_counts_nested_elements() {
        // 1 MiB of empty shipment detail lines (field 40, length 0): one
        // event that would decode to hundreds of MiB.
        let shipment = [0xc2, 0x02, 0x00].repeat(350_000);
        let mut event = vec![0x52]; // field 10 (shipment_closed), wire type 2
        prost::encoding::encode_varint(shipment.len() as u64, &mut event);
        event.extend_from_slice(&shipment);
        let mut req = vec![0x0a];
        prost::encoding::encode_varint(event.len() as u64, &mut req);
        req.extend_from_slice(&event);
        let small = Intake::new(
            &Config {
                max_decoded_request_bytes: 64 * 1024 * 1024,
                ..Config::default()
            },
            Arc::default(),
        )
        .unwrap();
        let publish = shape(&small, "stevedore.v1.PublishRequest");
        let err = small.scan(publish, &req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("max_decoded_request_bytes"));
    }

    #[test]
    fn malformed_input_is_refused_as_prost_would() {
        let i = intake();
        let batch = shape(&i, "stevedore.v1.PublishBatchRequest");
        for bad in [&[0x0a, 0x05, 0x00][..], &[0x08][..], &[0x0f][..]] {
            let err = i.scan(batch, bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Internal, "{bad:?}");
        }
        // Unknown fields, groups included, are skipped as prost skips them.
        assert!(i.scan(batch, &[0x9b, 0x01, 0x08, 0x01, 0x9c, 0x01]).is_ok());
    }
}
