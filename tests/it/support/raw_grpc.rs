//! gRPC on the wire, for tests that speak raw HTTP/2 to the broker: message
//! framing, and the percent-encoding of `grpc-message` and of
//! `X-Stevedore-Event-Id`.

/// gRPC message framing: flag, big-endian length, bytes.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits is kept as
/// it is.
pub fn percent_decode_bytes(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let hex = v
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (v[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// [`percent_decode_bytes`] as text (invalid UTF-8 replaced).
pub fn percent_decode(v: &[u8]) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(v)).into_owned()
}
