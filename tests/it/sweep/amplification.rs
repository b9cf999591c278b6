//! Memory amplification: empty elements and map entries by the million.

use prost::Message;

use super::case::{Case, Ctx};
use crate::support::{frame, pick};

/// Issue #21.1: requests whose decoded form would be hundreds of times
/// their size; each must be refused before it is decoded (and the sweep's
/// closing checks show the broker still serves).
pub(super) fn amplification(ctx: &Ctx) -> Vec<Case> {
    const BATCH: &str = "/stevedore.v1.Publisher/PublishBatch";
    const PUBLISH: &str = "/stevedore.v1.Publisher/Publish";
    const STREAM: &str = "/stevedore.v1.Publisher/PublishStream";
    let mut out = Vec::new();
    let len = |n: usize| {
        let mut v = Vec::new();
        prost::encoding::encode_varint(n as u64, &mut v);
        v
    };
    let field = |tag: &[u8], body: &[u8]| {
        let mut v = tag.to_vec();
        v.extend(len(body.len()));
        v.extend_from_slice(body);
        v
    };
    // 1 M empty events (`0a 00`): 2 MiB.
    out.push(
        Case::grpc("amplification", BATCH, frame(&[0x0a, 0x00].repeat(1 << 20)))
            .refused(tonic::Code::InvalidArgument, "max_batch_events"),
    );
    // Just over max_batch_events empty events, then one valid event.
    let mut just_over = [0x0a, 0x00].repeat(ctx.config.max_batch_events + 1);
    just_over.extend(field(&[0x0a], &pick("", "SO").encode_to_vec()));
    out.push(
        Case::grpc("amplification", BATCH, frame(&just_over))
            .refused(tonic::Code::InvalidArgument, "max_batch_events"),
    );
    // 100,000 attributes on one event, in a batch and in a publish.
    let mut attrs = Vec::new();
    for i in 0..100_000 {
        let mut entry = field(&[0x0a], format!("k{i}").as_bytes());
        entry.extend(field(&[0x12], b"v"));
        attrs.extend(field(&[0x22], &entry));
    }
    out.push(
        Case::grpc("amplification", BATCH, frame(&field(&[0x0a], &attrs)))
            .refused(tonic::Code::InvalidArgument, "events[0].attributes"),
    );
    // Over what a Publish needs (max_event_bytes + 1 KiB).
    out.push(
        Case::grpc("amplification", PUBLISH, frame(&field(&[0x0a], &attrs)))
            .refused(tonic::Code::InvalidArgument, "refused before decoding"),
    );
    // One event (under max_event_bytes) of ~350,000 empty shipment detail
    // lines (field 40): hundreds of MiB decoded.
    let details = [0xc2, 0x02, 0x00].repeat((ctx.config.max_event_bytes - 64) / 3);
    let event = field(&[0x52], &details);
    out.push(
        Case::grpc("amplification", PUBLISH, frame(&field(&[0x0a], &event)))
            .refused(tonic::Code::ResourceExhausted, "max_decoded_request_bytes"),
    );
    // The same shapes as PublishStream messages, one after another.
    let mut stream = Vec::new();
    for _ in 0..3 {
        stream.extend(frame(&field(&[0x0a], &attrs)));
        stream.extend(frame(&field(&[0x0a], &event)));
    }
    out.push(
        Case::grpc("amplification", STREAM, stream)
            .refused(tonic::Code::InvalidArgument, "refused before decoding"),
    );
    // Packed offsets in an Ack: 1 byte each.
    let mut ack = field(&[0x0a], b"nobody");
    ack.extend(field(&[0x12], &vec![1u8; 2 << 20]));
    out.push(
        Case::grpc("amplification", "/stevedore.v1.Subscriber/Ack", frame(&ack))
            .refused(tonic::Code::OutOfRange, "message length too large"),
    );
    // Empty map entries in an endpoint's headers and filters.
    let mut endpoint = Vec::new();
    for _ in 0..200_000 {
        endpoint.extend_from_slice(&[0x32, 0x00, 0x2a, 0x00]);
    }
    out.push(Case::grpc(
        "amplification",
        "/stevedore.v1.Admin/CreateEndpoint",
        frame(&field(&[0x0a], &endpoint)),
    ));
    // Length prefixes that promise 16 MiB and stop after a few bytes: the
    // budget they reserved must come back.
    for _ in 0..20 {
        let mut cut = vec![0u8];
        cut.extend_from_slice(&((ctx.config.max_request_bytes as u32).to_be_bytes()));
        cut.extend_from_slice(&[0x0a, 0x00].repeat(32));
        out.push(Case::grpc("amplification", BATCH, cut));
    }
    out
}
