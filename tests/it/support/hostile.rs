//! Hostile input, shared by the bad-input sweep and the property tests.
//!
//! [`Gen`] builds any message of the public protos from a tape of bytes
//! (like `arbitrary`'s `Unstructured`): the descriptor decides the shape,
//! the tape every choice. Shrinking the tape (proptest) shrinks the message.
//! Values lean towards the ones that break things: control characters and
//! CR/LF, huge and empty strings, NaN and infinities, unknown enum numbers,
//! timestamps outside years 1-9999, negative durations, deep `Struct`s, big
//! repeated fields.

use std::{collections::HashMap, sync::OnceLock};

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};
use stevedore::pb;

/// The public protos' descriptors (well-known types included).
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptor set"))
}

/// A message descriptor by full name.
pub fn message(name: &str) -> MessageDescriptor {
    pool().get_message_by_name(name).expect(name)
}

/// Choices drawn from a byte tape; once it runs out, zeros and no more
/// fields or elements, so every tape, even an empty one, gives a small
/// message.
pub struct Gen<'a> {
    tape: &'a [u8],
    pos: usize,
    /// How often (out of 256) a value is chosen to be hostile rather than
    /// plausible.
    hostility: u8,
}

const STRINGS: &[&str] = &[
    "",
    "a.b",
    "pick.confirmed",
    "stevedore.internal",
    "x\r\nInjected: yes",
    "\r\n\r\nHTTP/1.1 200 OK",
    "nul\0byte",
    "tab\tand\u{7f}del",
    "\u{202e}rtl-override",
    "😀 emoji",
    "../../etc/passwd",
    "%00%0d%0a",
    "https://erp.example.com/hook",
    "http://127.0.0.1:9/x",
    "http://169.254.169.254/latest/meta-data/",
    "https://user:pw@example.com/",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "https://[::1]:443/",
    "https://",
    "ftp://x/y",
    "ep_01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "webhook-signature",
    "Content-Type",
    "X-Api-Key",
    "url,enabled",
    "1e309",
    "-1",
    "SO-1",
];

impl<'a> Gen<'a> {
    /// Mostly hostile values: for requests that should all be refused.
    pub fn new(tape: &'a [u8]) -> Self {
        Self {
            tape,
            pos: 0,
            hostility: 160,
        }
    }

    /// Mostly plausible values with some hostile ones: enough messages get
    /// through validation for properties of accepted input to be tested.
    pub fn mild(tape: &'a [u8]) -> Self {
        Self {
            hostility: 6,
            ..Self::new(tape)
        }
    }

    fn hostile(&mut self) -> bool {
        self.chance(self.hostility)
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.tape.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) << 32 | self.u32() as u64
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 256 {
            self.byte() as usize % n
        } else {
            self.u32() as usize % n
        }
    }

    /// True with probability about `p`/256.
    pub fn chance(&mut self, p: u8) -> bool {
        self.byte() < p
    }

    pub fn string(&mut self) -> String {
        if !self.hostile() {
            if self.chance(64) {
                let plausible = [
                    "dock.door_opened",
                    "a.b",
                    "x.y_z",
                    "SO-1",
                    "FC1",
                    "https://h/x",
                ];
                return plausible[self.below(plausible.len())].to_string();
            }
            let n = self.below(12);
            return (0..n)
                .map(|_| char::from(b"abcxyz0123456789-_"[self.below(18)]))
                .collect();
        }
        match self.below(8) {
            0..=2 => STRINGS[self.below(STRINGS.len())].to_string(),
            3 => {
                // Long: past most limits (ids 256 bytes, attributes 1 KiB,
                // header values 4 KiB).
                let n = [257, 1025, 2049, 4097, 70_000][self.below(5)];
                "x".repeat(n)
            }
            _ => {
                let n = self.below(24);
                (0..n)
                    .map(|_| match self.below(6) {
                        0 => char::from(self.byte() % 0x20), // control characters
                        1 => char::from_u32(0x80 + self.u32() % 0x10_0000).unwrap_or('\u{fffd}'),
                        2 => ['.', ':', '/', '@', '%', ' ', '\r', '\n'][self.below(8)],
                        _ => char::from(b'a' + self.byte() % 26),
                    })
                    .collect()
            }
        }
    }

    fn double(&mut self) -> f64 {
        const SPECIAL: &[f64] = &[
            0.0,
            -0.0,
            1.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            0.123_456_789_123,
            1e21,
        ];
        if !self.hostile() {
            self.u32() as f64 / 1000.0
        } else if self.chance(128) {
            SPECIAL[self.below(SPECIAL.len())]
        } else {
            f64::from_bits(self.u64())
        }
    }

    fn int(&mut self) -> i64 {
        const SPECIAL: &[i64] = &[
            0,
            1,
            -1,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
            253_402_300_800, // 10000-01-01T00:00:00Z
            -62_135_596_801, // just before 0001-01-01
            1_000_000_000,
        ];
        if !self.hostile() {
            // Plausible counts and times (2001 to 2106).
            1_000_000_000 + self.u32() as i64
        } else if self.chance(128) {
            SPECIAL[self.below(SPECIAL.len())]
        } else {
            self.u64() as i64
        }
    }

    /// A message of type `desc`; `depth` bounds the nesting.
    pub fn message(&mut self, desc: &MessageDescriptor, depth: usize) -> DynamicMessage {
        let mut msg = DynamicMessage::new(desc.clone());
        if depth == 0 || self.exhausted() {
            return msg;
        }
        for oneof in desc.oneofs().filter(|o| !o.is_synthetic()) {
            let fields: Vec<_> = oneof.fields().collect();
            let pick = self.below(fields.len() + 1);
            if let Some(f) = fields.get(pick) {
                let v = self.single(&f.kind(), depth);
                msg.set_field(f, v);
            }
        }
        for f in desc.fields() {
            if f.containing_oneof().is_some_and(|o| !o.is_synthetic()) {
                continue;
            }
            if !self.chance(150) {
                continue;
            }
            let v = self.field(&f, depth);
            msg.set_field(&f, v);
        }
        msg
    }

    /// Past the end of the tape: stop growing the message.
    fn exhausted(&self) -> bool {
        self.pos >= self.tape.len()
    }

    fn count(&mut self) -> usize {
        if self.exhausted() {
            return 0;
        }
        if self.hostile() && self.chance(64) {
            return 100 + self.below(400); // big
        }
        match self.below(16) {
            1..=5 => 0,
            _ => 1 + self.below(4),
        }
    }

    fn field(&mut self, f: &FieldDescriptor, depth: usize) -> Value {
        let kind = f.kind();
        if f.is_map() {
            let Kind::Message(entry) = &kind else {
                unreachable!("map fields are entry messages")
            };
            let (kf, vf) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let mut map = HashMap::new();
            for _ in 0..self.count() {
                let key = match self.single(&kf.kind(), depth) {
                    Value::String(s) => MapKey::String(s),
                    Value::I32(i) => MapKey::I32(i),
                    Value::I64(i) => MapKey::I64(i),
                    Value::U32(i) => MapKey::U32(i),
                    Value::U64(i) => MapKey::U64(i),
                    Value::Bool(b) => MapKey::Bool(b),
                    other => unreachable!("map key {other:?}"),
                };
                let v = self.single(&vf.kind(), depth - 1);
                map.insert(key, v);
            }
            Value::Map(map)
        } else if f.is_list() {
            let n = self.count();
            Value::List((0..n).map(|_| self.single(&kind, depth - 1)).collect())
        } else {
            self.single(&kind, depth)
        }
    }

    fn single(&mut self, kind: &Kind, depth: usize) -> Value {
        match kind {
            Kind::Double => Value::F64(self.double()),
            Kind::Float => Value::F32(self.double() as f32),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(self.int() as i32),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(self.int()),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(self.int() as u32),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(self.int() as u64),
            Kind::Bool => Value::Bool(self.chance(128)),
            Kind::String => Value::String(self.string()),
            Kind::Bytes => {
                let n = self.below(64);
                Value::Bytes((0..n).map(|_| self.byte()).collect::<Vec<_>>().into())
            }
            Kind::Enum(e) => {
                let values: Vec<_> = e.values().collect();
                if !self.hostile() || self.chance(128) {
                    Value::EnumNumber(values[self.below(values.len())].number())
                } else {
                    Value::EnumNumber(self.int() as i32)
                }
            }
            Kind::Message(m) => match m.full_name() {
                "google.protobuf.Timestamp" | "google.protobuf.Duration" => {
                    let mut t = DynamicMessage::new(m.clone());
                    t.set_field_by_name("seconds", Value::I64(self.int()));
                    let nanos = if !self.hostile() || self.chance(128) {
                        (self.u32() % 1_000_000_000) as i32
                    } else {
                        self.int() as i32
                    };
                    t.set_field_by_name("nanos", Value::I32(nanos));
                    Value::Message(t)
                }
                // Struct values may nest far deeper than everything else.
                "google.protobuf.Value" if depth > 0 && self.hostile() && self.chance(64) => {
                    let levels = 20 + self.below(60);
                    Value::Message(self.deep_value(m, levels))
                }
                _ if depth == 0 => Value::Message(DynamicMessage::new(m.clone())),
                _ => Value::Message(self.message(m, depth - 1)),
            },
        }
    }

    /// A `google.protobuf.Value` that is `levels` lists/structs deep.
    fn deep_value(&mut self, value_desc: &MessageDescriptor, levels: usize) -> DynamicMessage {
        let list_desc = message("google.protobuf.ListValue");
        let struct_desc = message("google.protobuf.Struct");
        let mut v = DynamicMessage::new(value_desc.clone());
        v.set_field_by_name("string_value", Value::String("leaf".into()));
        for _ in 0..levels {
            let mut outer = DynamicMessage::new(value_desc.clone());
            if self.chance(128) {
                let mut l = DynamicMessage::new(list_desc.clone());
                l.set_field_by_name("values", Value::List(vec![Value::Message(v)]));
                outer.set_field_by_name("list_value", Value::Message(l));
            } else {
                let mut s = DynamicMessage::new(struct_desc.clone());
                let mut fields = HashMap::new();
                fields.insert(MapKey::String("k".into()), Value::Message(v));
                s.set_field_by_name("fields", Value::Map(fields));
                outer.set_field_by_name("struct_value", Value::Message(s));
            }
            v = outer;
        }
        v
    }
}

/// A `stevedore.v1.Event` with its payload set to variant `variant` (0-6)
/// of the `payload` oneof, every other choice from `tape`. `None` when the
/// message does not decode as `pb::Event` (prost's recursion limit).
pub fn event(g: &mut Gen, variant: usize) -> Option<pb::Event> {
    let desc = message("stevedore.v1.Event");
    let mut m = g.message(&desc, 4);
    let payload: Vec<_> = desc
        .oneofs()
        .find(|o| o.name() == "payload")
        .expect("Event has a payload oneof")
        .fields()
        .collect();
    let f = &payload[variant % payload.len()];
    let Kind::Message(pm) = f.kind() else {
        unreachable!("payloads are messages")
    };
    m.set_field(f, Value::Message(g.message(&pm, 4)));
    prost::Message::decode(prost::Message::encode_to_vec(&m).as_slice()).ok()
}

/// Protobuf wire-format pieces, for frames a typed encoder would not write.
pub mod wire {
    pub fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A key: field number and wire type.
    pub fn key(field: u32, wire_type: u8, out: &mut Vec<u8>) {
        varint((field as u64) << 3 | wire_type as u64, out);
    }

    /// A length-delimited field.
    pub fn bytes(field: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        key(field, 2, &mut out);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// A varint field.
    pub fn uint(field: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        key(field, 0, &mut out);
        varint(v, &mut out);
        out
    }
}
