//! A Standard Webhooks signature verifier written from the spec,
//! independently of the broker's signing code.

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Recorded;

/// The Standard Webhooks signature of a message: `v1,` + base64 (standard,
/// padded) of HMAC-SHA256, keyed with the base64-decoded part of `secret`
/// after `whsec_`, over `"{msg_id}.{timestamp}.{body}"`.
pub fn sign(secret: &str, msg_id: &str, timestamp: &str, body: &[u8]) -> Result<String, String> {
    let key = secret_key(secret)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&key).map_err(|e| format!("HMAC key rejected: {e}"))?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| "secret does not start with `whsec_`".to_owned())?;
    let key = BASE64
        .decode(encoded)
        .map_err(|e| format!("secret after `whsec_` is not standard base64: {e}"))?;
    if key.is_empty() {
        return Err("secret key is empty".to_owned());
    }
    Ok(key)
}

/// The entries of the request's `webhook-signature` header (space-separated,
/// each `v1,<base64>`), as sent. Empty when the header is missing.
pub fn signatures(r: &Recorded) -> Vec<String> {
    r.header("webhook-signature")
        .map(|v| {
            v.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Checks the request's Standard Webhooks signature against `secret`
/// (`whsec_...`): ok when any `v1,` entry of `webhook-signature` matches.
/// The timestamp's age is not checked (see [`timestamp_skew`]).
pub fn verify_signature(secret: &str, r: &Recorded) -> Result<(), String> {
    let id = r.header("webhook-id").ok_or("no webhook-id header")?;
    let ts = r
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp header")?;
    if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("webhook-timestamp {ts:?} is not unix seconds"));
    }
    let sigs = signatures(r);
    if sigs.is_empty() {
        return Err("no webhook-signature header (or it is empty)".to_owned());
    }
    let want = sign(secret, id, ts, &r.body)?;
    if sigs.contains(&want) {
        return Ok(());
    }
    let malformed: Vec<&String> = sigs
        .iter()
        .filter(|s| {
            s.strip_prefix("v1,")
                .is_none_or(|b| BASE64.decode(b).map_or(true, |k| k.len() != 32))
        })
        .collect();
    Err(format!(
        "no signature matches: expected {want} for webhook-id {id:?}, webhook-timestamp {ts} \
         and the {}-byte body; got {sigs:?}{}",
        r.body.len(),
        if malformed.is_empty() {
            String::new()
        } else {
            format!(" (not `v1,` + base64 of 32 bytes: {malformed:?})")
        }
    ))
}

/// `webhook-timestamp` minus the time the request was received, in seconds
/// (both unix time; positive: the timestamp is in the future).
pub fn timestamp_skew(r: &Recorded) -> Result<i64, String> {
    let ts: i64 = r
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp header")?
        .parse()
        .map_err(|e| format!("webhook-timestamp is not an integer: {e}"))?;
    let received = std::time::SystemTime::now()
        .checked_sub(r.received_at.elapsed())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .ok_or("clock before 1970")?;
    Ok(ts - received.as_secs() as i64)
}
