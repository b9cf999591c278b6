//! Property tests ("fuzzing") over the code that meets untrusted bytes:
//! event validation, the webhook JSON shapers and endpoint validation (key
//! encoding: `store::keys`'s own properties). Inputs come from [`crate::support::hostile::Gen`], which builds
//! messages from the public protos' descriptors and leans towards values
//! that break things.
//!
//! `cargo test` runs a few hundred cases per property. For a longer run,
//! set `PROPTEST_CASES` (`.ci/run` does, in release, under a time bound):
//! `PROPTEST_CASES=20000 cargo test --release --test it fuzz_`.
//!
//! Not covered yet: the filter-expression parser, which does not exist;
//! add a property here when it lands.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::{collection::vec, prelude::*, test_runner::Config as ProptestConfig};
use stevedore::{
    config::Config,
    convert::{endpoint::endpoint_from_pb, validate_event, EventLimits},
    delivery::endpoint::EndpointSpec,
    pb,
    webhook::render_body,
};

use crate::support::hostile::{message, Gen};

/// `default` cases unless `PROPTEST_CASES` says otherwise; failures are
/// reported with the minimal input, not written to the source tree.
fn config(default: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default;
    }
    c.failure_persistence = None;
    c
}

fn tape(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// A fixed clock, so a failure reproduces.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_770_000_000)
}

/// `body` is a JSON object, written exactly as `serde_json` writes that
/// value (compact, its escaping and number forms): the shapers write bytes
/// directly, and must keep producing what the `serde_json::Value` trees
/// they used to build serialised to.
fn assert_json(body: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(body)));
    assert!(v.is_object(), "body is not a JSON object: {v}");
    let canonical = serde_json::to_vec(&v).expect("a parsed value serialises");
    assert!(
        canonical == body,
        "body is not in serde_json's form:\n got  {}\n want {}",
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&canonical)
    );
}

proptest! {
    #![proptest_config(config(300))]

    /// Validation never panics; whatever it accepts renders, on every
    /// event type's shaper, to a JSON object, the same bytes every time.
    #[test]
    fn fuzz_validate_then_render(variant in 0..7usize, tape in tape(3000)) {
        let Some(event) = crate::support::hostile::event(&mut Gen::mild(&tape), variant) else {
            return Ok(());
        };
        let limits = EventLimits { max_event_bytes: 1024 * 1024 };
        if let Ok(accepted) = validate_event(event, &"event", now(), limits) {
            prop_assert!(!accepted.event.id.is_empty());
            prop_assert!(!accepted.event.ordering_key.is_empty());
            let body = render_body(&accepted.event).expect("accepted events render");
            assert_json(&body);
            prop_assert_eq!(render_body(&accepted.event).unwrap(), body);
        }
    }

    /// The shapers never panic, even on events validation would refuse
    /// (stored events from older versions, bugs elsewhere).
    #[test]
    fn fuzz_render_anything(variant in 0..7usize, tape in tape(3000)) {
        let Some(event) = crate::support::hostile::event(&mut Gen::new(&tape), variant) else {
            return Ok(());
        };
        if let Ok(body) = render_body(&event) {
            assert_json(&body);
        }
    }

    /// Endpoint validation never panics, and what it accepts carries no
    /// CR, LF or other control character into the request it will send.
    #[test]
    fn fuzz_endpoint_from_generated_messages(tape in tape(2000), allow_http in any::<bool>()) {
        let mut g = Gen::mild(&tape);
        let m = g.message(&message("stevedore.v1.Endpoint"), 4);
        let Ok(endpoint) = prost::Message::decode(prost::Message::encode_to_vec(&m).as_slice())
        else {
            return Ok(());
        };
        check_endpoint(&endpoint, allow_http);
    }

    /// The same with URLs and headers built from hostile pieces, so that
    /// many are accepted and the checks below have something to check.
    #[test]
    fn fuzz_endpoint_urls_and_headers(
        scheme in prop::sample::select(vec!["https://", "http://", "HTTPS://", "ftp://", "", "//"]),
        host in prop_oneof![
            4 => "[a-z0-9][a-z0-9.\\-]{0,20}(:[0-9]{1,5})?",
            1 => "[a-z0-9.\\-:@\\[\\]%\r\n ]{0,30}",
        ],
        path in prop_oneof![
            4 => "[A-Za-z0-9/_.~%\\-?=&]{0,30}",
            1 => "[ -~\r\n\t\u{0}\u{80}-\u{ff}]{0,40}",
        ],
        headers in prop_oneof![
            4 => prop::collection::btree_map("[A-Za-z0-9\\-]{1,16}", "[ -~]{0,48}", 0..5),
            1 => prop::collection::btree_map(
                "[A-Za-z0-9\\-_:\r\n ]{0,16}",
                "[ -~\r\n\t\u{0}\u{7f}-\u{ff}]{0,48}",
                0..40,
            ),
        ],
        injected in proptest::option::of(("[A-Za-z\\-]{1,12}", "[a-z]{0,4}[\r\n\u{0}][ -~]{0,12}")),
    ) {
        let mut headers: std::collections::HashMap<String, String> = headers.into_iter().collect();
        if let Some((k, v)) = injected {
            headers.insert(k, v);
        }
        let endpoint = pb::Endpoint {
            url: format!("{scheme}{host}/{path}"),
            headers,
            ..Default::default()
        };
        check_endpoint(&endpoint, true);
    }
}

/// Header names the broker owns.
const RESERVED: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-jasci-event",
];

fn check_endpoint(endpoint: &pb::Endpoint, allow_http: bool) {
    let config = Config {
        allow_http,
        ..Config::default()
    };
    // The API's path: the message into the domain, then validation.
    let Ok(spec) =
        endpoint_from_pb(endpoint.clone()).and_then(|e| EndpointSpec::validate(&e, &config))
    else {
        return;
    };
    let url = spec.url.to_string();
    assert!(
        !url.bytes().any(|b| b.is_ascii_control() || b == b' '),
        "accepted URL {url:?}"
    );
    assert!(matches!(spec.url.scheme_str(), Some("https" | "http")));
    if !allow_http {
        assert_eq!(spec.url.scheme_str(), Some("https"), "{url}");
    }
    assert!(spec.headers.len() <= config.max_endpoint_headers);
    for (name, value) in &spec.headers {
        assert!(
            !RESERVED.contains(&name.as_str()),
            "reserved header {name} accepted"
        );
        let bytes = value.as_bytes();
        assert!(bytes.len() <= config.max_endpoint_header_bytes);
        assert!(
            !bytes
                .iter()
                .any(|&b| b == b'\r' || b == b'\n' || b == 0 || b == 0x7f),
            "header {name}: {value:?}"
        );
        assert!(
            !name
                .as_str()
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b':'),
            "header name {name:?}"
        );
    }
}
