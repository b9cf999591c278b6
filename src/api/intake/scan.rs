//! The walk over a request message's protobuf wire format: tags and
//! lengths only, no allocation. It counts repeated elements against their
//! limits and adds up what prost would allocate to decode the message.

use tonic::Status;

use super::{CountRule, Intake, Kind, MAX_DEPTH};
use crate::error::Error;

impl Intake {
    /// Walks one encoded message of type `shape`: `Ok(estimated decoded
    /// bytes)`, or the refusal.
    pub(super) fn scan(&self, shape: usize, bytes: &[u8]) -> Result<usize, Status> {
        let mut scan = Scan {
            intake: self,
            cost: 0,
            path: Vec::new(),
        };
        scan.message(shape, bytes, 0)?;
        Ok(scan.cost)
    }
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
