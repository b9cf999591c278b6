//! Hand-written hostile requests.

use std::collections::BTreeMap;

use prost::Message;
use stevedore::pb;

use super::{
    amplification::amplification,
    case::{Case, Ctx, BAD_ID},
};
use crate::support::{frame, hostile::wire, pick};

/// Hand-written hostile requests: bad URLs, header injection, unknown
/// fields, wrong wire types, non-UTF-8, deep and huge messages, bad enums,
/// and requests aimed at the real endpoints that must all be refused.
pub(super) fn crafted(ctx: &Ctx) -> Vec<Case> {
    const CREATE: &str = "/stevedore.v1.Admin/CreateEndpoint";
    const PUBLISH: &str = "/stevedore.v1.Publisher/Publish";
    let mut out = Vec::new();
    let create = |ctx: &Ctx, e: pb::Endpoint| {
        let body = ctx.defang(
            CREATE,
            pb::CreateEndpointRequest { endpoint: Some(e) }.encode_to_vec(),
        );
        Case::grpc("crafted", CREATE, frame(&body))
    };
    for url in [
        "",
        "ftp://erp.example.com/x",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "https://user:pw@erp.example.com/",
        "https://",
        "https:///path",
        "//erp.example.com/x",
        "https://erp.example.com:99999/",
        "https://[::1/",
        "https://erp.example.com/\u{0}",
        "https://erp.example.com/\r\nHost: evil",
        "https://erp.example.com/ x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "gopher://127.0.0.1:25/",
        &format!("https://erp.example.com/{}", "a".repeat(5000)),
        "https://😀.example/",
        "https://erp.example.com\\@evil.example/",
    ] {
        out.push(create(
            ctx,
            pb::Endpoint {
                url: url.into(),
                ..Default::default()
            },
        ));
    }
    let url = "https://erp.example.com/hook";
    let headers = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for h in [
        vec![("X-Evil", "a\r\nInjected: 1")],
        vec![("X-Evil", "a\nInjected: 1")],
        vec![("X-Evil\r\nInjected", "1")],
        vec![("X-Evil", "nul\0")],
        vec![("webhook-signature", "v1,forged")],
        vec![("Host", "evil.example")],
        vec![("Content-Length", "0")],
        vec![("Transfer-Encoding", "chunked")],
        vec![("", "x")],
        vec![("X Space", "x")],
        vec![("X-Unicode", "é")],
        // Issue #21: visible ASCII only.
        vec![("X-Api-Key", "cred\u{80}")],
        vec![("X-Api-Key", "cred\u{200b}")],
        vec![("X-Api-Key", "tab\tcred")],
        vec![("X-Api-Key", "del\u{7f}")],
    ] {
        out.push(create(
            ctx,
            pb::Endpoint {
                url: url.into(),
                headers: headers(&h),
                ..Default::default()
            },
        ));
    }
    let many: Vec<(String, String)> = (0..40).map(|i| (format!("x-h{i}"), "v".into())).collect();
    out.push(create(
        ctx,
        pb::Endpoint {
            url: url.into(),
            headers: many.into_iter().collect(),
            ..Default::default()
        },
    ));
    out.push(create(
        ctx,
        pb::Endpoint {
            url: url.into(),
            headers: headers(&[("X-Big", &"v".repeat(5000))]),
            ..Default::default()
        },
    ));
    out.push(create(
        ctx,
        pb::Endpoint {
            url: url.into(),
            ordering: 77,
            ..Default::default()
        },
    ));
    out.push(create(
        ctx,
        pb::Endpoint {
            url: url.into(),
            event_types: vec!["NOT A TYPE".into()],
            ..Default::default()
        },
    ));
    // Issue #21: event_types capped and without duplicates.
    for types in [
        vec!["pick.confirmed".to_string(); 100_000],
        vec!["pick.confirmed".to_string(), "pick.confirmed".to_string()],
        (0..=stevedore::model::MAX_EVENT_TYPES)
            .map(|i| format!("custom.t{i}"))
            .collect(),
    ] {
        out.push(create(
            ctx,
            pb::Endpoint {
                url: url.into(),
                event_types: types,
                ..Default::default()
            },
        ));
    }
    // Issue #21: refused by CreateEndpoint itself, not by EndpointSpec, so
    // sent as they are (defang would turn them into something else): a
    // start past the head, and a Teredo address whose server (127.0.0.1)
    // the test allowlist covers but whose client is the metadata service.
    let raw_create = |e: pb::Endpoint| {
        Case::grpc(
            "crafted",
            CREATE,
            frame(&pb::CreateEndpointRequest { endpoint: Some(e) }.encode_to_vec()),
        )
    };
    for offset in [u64::MAX, 1 << 40] {
        out.push(raw_create(pb::Endpoint {
            url: url.into(),
            start: Some(pb::endpoint::Start::StartOffset(offset)),
            ..Default::default()
        }));
    }
    out.push(raw_create(pb::Endpoint {
        url: "https://[2001:0:7f00:1::5601:5601]/hook".into(),
        ..Default::default()
    }));

    // Aimed at the real endpoints: every one must be refused.
    for id in &ctx.endpoint_ids {
        let update = |e: pb::Endpoint, paths: &[&str]| {
            let req = pb::UpdateEndpointRequest {
                endpoint: Some(pb::Endpoint {
                    id: id.clone(),
                    ..e
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
                ..Default::default()
            };
            Case::grpc(
                "crafted",
                "/stevedore.v1.Admin/UpdateEndpoint",
                frame(&req.encode_to_vec()),
            )
        };
        out.push(update(
            pb::Endpoint {
                url: "ftp://x/".into(),
                ..Default::default()
            },
            &["url"],
        ));
        out.push(update(
            pb::Endpoint {
                url: "https://x/\r\n".into(),
                ..Default::default()
            },
            &["url", "enabled"],
        ));
        out.push(update(
            pb::Endpoint {
                headers: headers(&[("X-Evil", "a\r\nb: c")]),
                ..Default::default()
            },
            &["headers"],
        ));
        out.push(update(
            pb::Endpoint {
                headers: headers(&[("X-Api-Key", "caf\u{e9}")]),
                ..Default::default()
            },
            &["headers"],
        ));
        out.push(update(
            pb::Endpoint {
                event_types: vec!["order.status".into(); 3],
                ..Default::default()
            },
            &["event_types"],
        ));
        // Issue #21: a replay past the head would silence the endpoint.
        out.push(Case::grpc(
            "crafted",
            "/stevedore.v1.Admin/ReplayEndpoint",
            frame(
                &pb::ReplayEndpointRequest {
                    dry_run: false,
                    endpoint_id: id.clone(),
                    start: Some(pb::replay_endpoint_request::Start::Offset(u64::MAX)),
                }
                .encode_to_vec(),
            ),
        ));
        out.push(update(pb::Endpoint::default(), &["nope"]));
        out.push(update(pb::Endpoint::default(), &["secret"]));
        out.push(update(
            pb::Endpoint {
                ordering: 42,
                ..Default::default()
            },
            &["ordering"],
        ));
        out.push(update(
            pb::Endpoint {
                enabled: Some(true),
                ..Default::default()
            },
            &[],
        ));
        for grace in [(-1, 0), (31 * 86_400, 0), (0, -5), (0, 2_000_000_000)] {
            let req = pb::RotateEndpointSecretRequest {
                id: id.clone(),
                grace_period: Some(prost_types::Duration {
                    seconds: grace.0,
                    nanos: grace.1,
                }),
            };
            out.push(Case::grpc(
                "crafted",
                "/stevedore.v1.Admin/RotateEndpointSecret",
                frame(&req.encode_to_vec()),
            ));
        }
        let replay = pb::ReplayEndpointRequest {
            dry_run: false,
            endpoint_id: id.clone(),
            start: None,
        };
        out.push(Case::grpc(
            "crafted",
            "/stevedore.v1.Admin/ReplayEndpoint",
            frame(&replay.encode_to_vec()),
        ));
        let replay = pb::ReplayEndpointRequest {
            dry_run: false,
            endpoint_id: id.clone(),
            start: Some(pb::replay_endpoint_request::Start::Time(
                prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                },
            )),
        };
        out.push(Case::grpc(
            "crafted",
            "/stevedore.v1.Admin/ReplayEndpoint",
            frame(&replay.encode_to_vec()),
        ));
        let retry = pb::RetryDeliveryRequest {
            endpoint_id: id.clone(),
            offset: 0,
        };
        out.push(Case::grpc(
            "crafted",
            "/stevedore.v1.Admin/RetryDelivery",
            frame(&retry.encode_to_vec()),
        ));
    }

    // Bad enums and numbers in typed events.
    let publish = |ctx: &Ctx, e: pb::Event| {
        let body = ctx.defang(
            PUBLISH,
            pb::PublishRequest { event: Some(e) }.encode_to_vec(),
        );
        Case::grpc("crafted", PUBLISH, frame(&body))
    };
    for status in [-1, 5, 999, i32::MAX, i32::MIN] {
        let mut e = pick("", "SO");
        if let Some(pb::event::Payload::PickConfirmed(p)) = &mut e.payload {
            p.status = status;
        }
        out.push(publish(ctx, e));
    }
    for qty in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut e = pick("", "SO");
        if let Some(pb::event::Payload::PickConfirmed(p)) = &mut e.payload {
            p.total_qty = Some(qty);
        }
        out.push(publish(ctx, e));
    }
    // Deep Struct: past validation's limit, and past prost's recursion limit.
    for depth in [33, 40, 200] {
        let mut v = prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("leaf".into())),
        };
        for _ in 0..depth {
            let mut fields = BTreeMap::new();
            fields.insert("k".to_string(), v);
            v = prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                    fields,
                })),
            };
        }
        let Some(prost_types::value::Kind::StructValue(data)) = v.kind else {
            unreachable!()
        };
        let e = pb::Event {
            payload: Some(pb::event::Payload::Custom(pb::CustomEvent {
                r#type: "deep.nesting".into(),
                data: Some(data),
            })),
            ..Default::default()
        };
        out.push(publish(ctx, e));
    }

    // Raw protobuf a typed encoder would not write.
    let event_field = |inner: Vec<u8>| frame(&wire::bytes(1, &inner));
    // Event.id (a string) sent as a varint; payload as a fixed64.
    out.push(Case::grpc(
        "crafted",
        PUBLISH,
        event_field(wire::uint(1, 5)),
    ));
    out.push(Case::grpc(
        "crafted",
        PUBLISH,
        event_field({
            let mut v = Vec::new();
            wire::key(10, 1, &mut v);
            v.extend_from_slice(&[0; 8]);
            v
        }),
    ));
    // Non-UTF-8 in string fields: an event id, a consumer, a URL.
    out.push(Case::grpc(
        "crafted",
        PUBLISH,
        event_field(wire::bytes(1, &[0xff, 0xfe, b'a'])),
    ));
    out.push(Case::grpc(
        "crafted",
        "/stevedore.v1.Subscriber/Subscribe",
        frame(&wire::bytes(1, &[0xc3, 0x28])),
    ));
    out.push(Case::grpc(
        "crafted",
        "/stevedore.v1.Subscriber/Ack",
        frame(&wire::bytes(1, &[0xed, 0xa0, 0x80])),
    ));
    out.push(Case::grpc(
        "crafted",
        CREATE,
        frame(&wire::bytes(1, &wire::bytes(2, b"https://\xff/"))),
    ));
    // A length running past the end; a varint that never ends; group wire types.
    out.push(Case::grpc("crafted", PUBLISH, frame(&[0x0a, 0x7f, 0x0a])));
    out.push(Case::grpc(
        "crafted",
        PUBLISH,
        frame(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]),
    ));
    out.push(Case::grpc("crafted", PUBLISH, frame(&[0x0b, 0x0c])));
    out.push(Case::grpc("crafted", PUBLISH, frame(&[0x00])));
    // Unknown fields around an invalid event (they must be skipped, not
    // trusted): every wire type, big field numbers.
    let mut unknown = pb::PublishRequest {
        event: Some(pb::Event {
            id: BAD_ID.into(),
            ..pick("", "SO")
        }),
    }
    .encode_to_vec();
    unknown.extend(wire::uint(999, 1));
    unknown.extend(wire::bytes(536_870_911, &[1, 2, 3]));
    let mut fixed = Vec::new();
    wire::key(12_345, 5, &mut fixed);
    fixed.extend_from_slice(&[0; 4]);
    unknown.extend(fixed);
    out.push(Case::grpc("crafted", PUBLISH, frame(&unknown)));

    // Huge repeated fields.
    let batch = pb::PublishBatchRequest {
        events: (0..ctx.config.max_batch_events + 1)
            .map(|_| pick("", "SO"))
            .collect(),
    };
    out.push(Case::grpc(
        "crafted",
        "/stevedore.v1.Publisher/PublishBatch",
        frame(&batch.encode_to_vec()),
    ));
    let sub = pb::SubscribeRequest {
        event_types: vec!["x".repeat(10); 100_000],
        ack_mode: 99,
        ..Default::default()
    };
    out.push(Case::grpc(
        "crafted",
        "/stevedore.v1.Subscriber/Subscribe",
        frame(&sub.encode_to_vec()),
    ));
    let ack = pb::AckRequest {
        consumer: "nobody".into(),
        offsets: (0..1_000_000).collect(),
    };
    out.push(Case::grpc(
        "crafted",
        "/stevedore.v1.Subscriber/Ack",
        frame(&ack.encode_to_vec()),
    ));
    // Over max_request_bytes (the length prefix says so; the bytes follow).
    let oversize = vec![0u8; ctx.config.max_request_bytes + 1];
    out.push(Case::grpc("crafted", PUBLISH, frame(&oversize)));
    out.extend(amplification(ctx));
    out
}
