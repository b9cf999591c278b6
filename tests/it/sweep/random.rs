//! Structure-aware random requests: generated messages for every method,
//! broken gRPC framing around them, and hostile metadata.

use http::{HeaderName, HeaderValue, Method};
use rand::{rngs::StdRng, Rng};

use super::{
    case::{random_bytes, Case, Ctx, Http},
    crafted::crafted,
    REQUESTS,
};
use crate::support::frame;

pub(super) fn cases(rng: &mut StdRng, ctx: &Ctx) -> Vec<Case> {
    let mut out: Vec<Case> = Vec::with_capacity(REQUESTS);
    out.extend(crafted(ctx));
    while out.len() < REQUESTS {
        let (path, input, streaming) = &ctx.methods[rng.random_range(0..ctx.methods.len())];
        let roll = rng.random_range(0..100);
        let case = match roll {
            // Structure-aware random messages; several frames on a stream.
            0..=44 => {
                let frames = if *streaming {
                    rng.random_range(0..4)
                } else {
                    1
                };
                let mut body = Vec::new();
                for _ in 0..frames {
                    body.extend(frame(&ctx.generated(rng, path, input)));
                }
                let mut c = Case::grpc("generated", path, body);
                c.may_succeed |= *streaming && frames == 0;
                c
            }
            // Random bytes as the message.
            45..=64 => {
                let msg = ctx.defang(path, random_bytes(rng, 512));
                Case::grpc("random bytes", path, frame(&msg))
            }
            // Broken gRPC framing around a hostile message.
            65..=84 => framing(rng, ctx, path, input),
            // Hostile HTTP and metadata.
            _ => metadata(rng, ctx, path, input),
        };
        out.push(case);
    }
    out
}

/// Broken framing: flags, lengths, truncation, extra frames.
pub(super) fn framing(rng: &mut StdRng, ctx: &Ctx, path: &str, input: &str) -> Case {
    let msg = ctx.generated(rng, path, input);
    let mut body = frame(&msg);
    let kind = rng.random_range(0..8);
    match kind {
        0 => body[0] = 1, // compressed, without grpc-encoding
        1 => body[0] = rng.random_range(2..=255),
        2 => {
            // Length says more than follows.
            let claimed = (msg.len() as u32).saturating_add(rng.random_range(1..1000));
            body[1..5].copy_from_slice(&claimed.to_be_bytes());
        }
        3 => body[1..5].copy_from_slice(&u32::MAX.to_be_bytes()),
        4 => body.truncate(rng.random_range(0..5)),
        5 => {
            let again = frame(&ctx.generated(rng, path, input));
            body.extend(again);
        }
        6 => body.extend(random_bytes(rng, 64)),
        _ => body.clear(),
    }
    let mut c = Case::grpc("framing", path, body);
    // A stream with no complete message is an empty stream: it publishes
    // nothing and may end OK. (tonic also ends a request stream cleanly when
    // the body stops right after a frame header.)
    let streaming = path.ends_with("/PublishStream");
    c.may_succeed |= streaming && c.body.len() <= 5;
    c
}

pub(super) fn header(name: &str, value: &[u8]) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_bytes(name.as_bytes()).unwrap(),
        HeaderValue::from_bytes(value).unwrap(),
    )
}

/// Hostile HTTP: content types, encodings, timeouts, paths, methods,
/// oversize and odd metadata.
pub(super) fn metadata(rng: &mut StdRng, ctx: &Ctx, path: &str, input: &str) -> Case {
    let body = frame(&ctx.generated(rng, path, input));
    let mut c = Case::grpc("metadata", path, body);
    c.own_connection = true;
    match rng.random_range(0..12) {
        0 => {
            let ct = [
                "text/plain",
                "application/json",
                "application/grpc+json",
                "",
                "application/grpc-web",
            ][rng.random_range(0..5)];
            c.headers.push(header("content-type", ct.as_bytes()));
        }
        1 => {
            let enc = ["gzip", "br", "zstd", "identity", "x-unknown", ""][rng.random_range(0..6)];
            c.headers.push(header("grpc-encoding", enc.as_bytes()));
            c.body = {
                let mut b = c.body.to_vec();
                b[0] = 1;
                b.into()
            };
        }
        2 => {
            let t = [
                "1n",
                "0S",
                "99999999H",
                "abc",
                "-1S",
                "1",
                "S",
                "100000000000S",
            ][rng.random_range(0..8)];
            c.headers.push(header("grpc-timeout", t.as_bytes()));
        }
        3 => {
            c.path = [
                "/stevedore.v1.Nope/Publish",
                "/stevedore.v1.Publisher/Nope",
                "/",
                "/stevedore.v1.Publisher",
                "/grpc.health.v1.Health/Nope",
                "//stevedore.v1.Publisher/Publish",
                "/stevedore.v1.Publisher/Publish/extra",
            ][rng.random_range(0..7)]
            .to_string();
            c.may_succeed = false;
        }
        4 => {
            c.path = format!("/{}", "a".repeat(rng.random_range(1000..8000)));
            c.may_succeed = false;
        }
        5 => c.method = [Method::GET, Method::PUT, Method::DELETE][rng.random_range(0..3)].clone(),
        6 => {
            // Over max_metadata_bytes.
            let n = ctx.config.max_metadata_bytes as usize + rng.random_range(1..20_000);
            c.headers.push(header("x-pad", "y".repeat(n).as_bytes()));
            c.http = Http::OversizeHeaders;
        }
        7 => {
            // Many small headers, together over the limit.
            for i in 0..rng.random_range(600..1200) {
                c.headers
                    .push(header(&format!("x-h{i}"), b"0123456789abcdef"));
            }
            c.http = Http::OversizeHeaders;
        }
        8 => {
            let v: Vec<u8> = (0..rng.random_range(1..64))
                .map(|_| rng.random_range(0x80..=0xff))
                .collect();
            c.headers.push(header("x-obs-text", &v));
            c.headers.push(header("authorization", &v));
        }
        9 => {
            // Response-only and reserved headers sent by a client.
            c.headers.push(header("grpc-status", b"0"));
            c.headers.push(header("grpc-message", b"fake"));
            c.headers
                .push(header("grpc-status-details-bin", b"!!not base64!!"));
        }
        10 => c.headers.push(header("authorization", b"Bearer garbage")),
        _ => c.headers.push(header("x-data-bin", b"!!not base64!!")),
    }
    c
}
