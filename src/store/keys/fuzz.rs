//! Property tests of the key encodings and the event-record decoder: a few
//! hundred cases under `cargo test`, more with `PROPTEST_CASES` (`.ci/run`).

use proptest::{collection::vec, prelude::*, test_runner::Config as ProptestConfig};

use super::*;

/// 300 cases unless `PROPTEST_CASES` says otherwise; failures are
/// reported with the minimal input, not written to the source tree.
fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 300;
    }
    c.failure_persistence = None;
    c
}

proptest! {
    #![proptest_config(config())]

    /// Offset keys round-trip and sort like the offsets.
    #[test]
    fn fuzz_offset_keys(a in any::<u64>(), b in any::<u64>(), junk in vec(any::<u8>(), 0..16)) {
        prop_assert_eq!(decode_offset(&offset_key(Offset::new(a))).unwrap(), Offset::new(a));
        prop_assert_eq!(a.cmp(&b), offset_key(Offset::new(a)).cmp(&offset_key(Offset::new(b))));
        prop_assert_eq!(decode_offset(&junk).is_ok(), junk.len() == 8);
    }

    /// Scoped keys stay inside their scope, sort by offset within it, and
    /// two scopes never share a key (for NUL-free prefixes, as ids are).
    #[test]
    fn fuzz_scoped_keys(
        p in "[^\u{0}]{0,40}",
        q in "[^\u{0}]{0,40}",
        a in any::<u64>(),
        b in any::<u64>(),
    ) {
        let (ka, kb) = (scoped_offset_key(&p, Offset::new(a)), scoped_offset_key(&p, Offset::new(b)));
        prop_assert!(ka.starts_with(&scope(&p)));
        prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        prop_assert_eq!(decode_offset(&ka[ka.len() - 8..]).unwrap(), Offset::new(a));
        if p != q {
            prop_assert!(!scoped_offset_key(&q, Offset::new(b)).starts_with(&scope(&p)));
        }
    }

    /// Decoding stored records from arbitrary bytes is an error, not a panic.
    #[test]
    fn fuzz_decode_event_record(key in vec(any::<u8>(), 0..12), value in vec(any::<u8>(), 0..512)) {
        let _ = decode_event(&key, &value);
    }
}
