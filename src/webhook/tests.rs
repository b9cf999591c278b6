use proptest::{collection::vec, prelude::*, sample::select};

use super::*;

fn number(n: f64) -> String {
    let mut out = Vec::new();
    write_number(&mut out, n);
    String::from_utf8(out).unwrap()
}

#[test]
fn numbers() {
    assert_eq!(number(5.0).to_string(), "5");
    assert_eq!(number(95.0).to_string(), "95");
    assert_eq!(number(-3.0).to_string(), "-3");
    assert_eq!(number(-0.0).to_string(), "0");
    assert_eq!(number(25.5).to_string(), "25.5");
    assert_eq!(number(0.1).to_string(), "0.1");
    assert_eq!(number(1e20).to_string(), "1e+20");
    assert_eq!(number(f64::NAN), "null");
}

#[test]
fn prices_keep_at_most_six_decimals() {
    for (p, want) in [
        (29.99, "29.99"),
        (29.999999, "29.999999"),
        (1.23456789, "1.234568"),
        (0.0000004, "0"),
        (0.0078125, "0.007812"), // 1/128: an exact tie, to even
        (0.0234375, "0.023438"),
        // serde_json writes very small magnitudes with an exponent.
        (0.0000006, "1e-6"),
        // 0.0000005 is stored just below the tie, so it rounds down.
        (0.0000005, "0"),
        (-1.23456789, "-1.234568"),
        (12.0, "12"),
        (123_456_789.123_456_7, "123456789.123457"),
        (1e300, "1e+300"),
    ] {
        assert_eq!(number(round_price(p)), want, "{p}");
    }
}

#[test]
fn object_omits_absent_values() {
    let v = Object::new()
        .str("a", "")
        .str("b", "x")
        .int("c", None::<i32>)
        .int("d", Some(0_i64))
        .num("e", None)
        .num("f", Some(0.0))
        .date("g", None)
        .label("h", pb::PickStatus::Unspecified)
        .label("i", pb::PickStatus::Short)
        .list("j", &[] as &[()], |o, _| o)
        .build();
    assert_eq!(v.to_string(), r#"{"b":"x","d":0,"f":0,"i":"SHORT"}"#);
}

#[test]
fn object_or_null_keeps_every_key_in_order() {
    let v = Object::new()
        .str_or_null("z", None)
        .str_or_null("y", Some(""))
        .int_or_null("x", None)
        .num_or_null("w", Some(1.5))
        .bool_or_null("v", Some(false))
        .date_or_null("u", None)
        .object("t", |o| o)
        .build();
    assert_eq!(
        v.to_string(),
        r#"{"z":null,"y":"","x":null,"w":1.5,"v":false,"u":null,"t":{}}"#
    );
}

/// Every value of every enum: the label is the proto name without the
/// prefix, and only 0 (`UNSPECIFIED`) is absent.
#[test]
fn enum_labels_strip_their_prefix() {
    fn check<E: Label + TryFrom<i32>>() {
        let values: Vec<E> = (0..).map_while(|i| E::try_from(i).ok()).collect();
        assert!(values.len() > 1, "{}", E::PREFIX);
        for (i, value) in values.into_iter().enumerate() {
            let name = value.proto_name();
            assert!(name.starts_with(E::PREFIX), "{name} lacks {}", E::PREFIX);
            let want = (i > 0).then(|| &name[E::PREFIX.len()..]);
            assert_eq!(value.label(), want, "{name}");
        }
    }
    check::<pb::TrackingStatus>();
    check::<pb::ShipmentStatus>();
    check::<pb::SignatureRequired>();
    check::<pb::PickStatus>();
    check::<pb::InventoryReason>();
    check::<pb::OrderStatus>();
    check::<pb::ReturnCondition>();
    check::<pb::ReturnDisposition>();
    assert_eq!(pb::TrackingStatus::Shipped.label(), Some("SHIPPED"));
    assert_eq!(pb::PickStatus::Short.label(), Some("SHORT"));
    assert_eq!(pb::InventoryReason::CycleCount.label(), Some("CYCLE_COUNT"));
    assert_eq!(
        pb::ReturnDisposition::ReturnToVendor.label(),
        Some("RETURN_TO_VENDOR")
    );
}

#[test]
fn missing_payload_is_an_error() {
    let err = render_body(&pb::Event::default()).unwrap_err();
    assert!(matches!(err, RenderError::NoPayload));
}

/// The copy-between-quotes path writes what `serde_json` writes: every
/// ASCII character alone and among others, and non-ASCII text.
#[test]
fn strings_are_written_as_serde_json_writes_them() {
    let mut samples: Vec<String> = (0u8..=0x7f).map(|b| char::from(b).to_string()).collect();
    samples.extend((0u8..=0x7f).map(|b| format!("ab{}cd", char::from(b))));
    samples.extend(
        [
            "",
            "plain",
            "café ☕ \u{2028}\u{7f}",
            "quote\"back\\slash",
            "tab\tnl\n",
        ]
        .map(String::from),
    );
    for s in &samples {
        let mut ours = Vec::new();
        write_str(&mut ours, s);
        assert_eq!(ours, serde_json::to_vec(s).unwrap(), "{s:?}");
    }
}

proptest! {
    /// The eight-bytes-at-a-time check finds exactly the bytes the plain
    /// one does, wherever they sit in the string.
    #[test]
    fn escaping_check_is_exact(
        s in vec(
            prop_oneof![
                any::<u8>(),
                select(vec![0u8, 0x1f, 0x20, b'"', b'\\', 0x7f, 0x80, 0xff, b'a']),
            ],
            0..40,
        )
    ) {
        let plain = s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        prop_assert_eq!(needs_escaping(&s), plain);
    }
}
