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
