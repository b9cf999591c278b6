//! Points in time as seconds and nanoseconds around the Unix epoch, the
//! way `google.protobuf.Timestamp` and the stored records write them
//! (nanoseconds count forward, also before 1970), converted exactly in
//! both directions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` as (seconds, nanoseconds in `0..1e9`) since the Unix epoch.
pub fn to_unix(t: SystemTime) -> (i64, i32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i32),
        Err(before) => {
            let d = before.duration();
            let (secs, nanos) = (d.as_secs() as i64, d.subsec_nanos() as i32);
            if nanos == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, 1_000_000_000 - nanos)
            }
        }
    }
}

/// The time (seconds, nanoseconds) since the Unix epoch name; `None` when
/// the nanoseconds are outside `0..1e9` or the time is out of range.
pub fn from_unix(seconds: i64, nanos: i32) -> Option<SystemTime> {
    if !(0..1_000_000_000).contains(&nanos) {
        return None;
    }
    let nanos = Duration::from_nanos(nanos as u64);
    if seconds >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(seconds as u64).checked_add(nanos)?)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(seconds.unsigned_abs()))?
            .checked_add(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_around_the_epoch() {
        for (s, n) in [
            (0, 0),
            (1_770_000_000, 1),
            (-1, 0),
            (-1, 999_999_999),
            (-62_135_596_800, 5),
            (253_402_300_799, 999_999_999),
        ] {
            let t = from_unix(s, n).unwrap();
            assert_eq!(to_unix(t), (s, n));
        }
        assert_eq!(
            from_unix(-1, 500_000_000).unwrap(),
            UNIX_EPOCH - Duration::from_millis(500)
        );
        assert!(from_unix(0, -1).is_none() && from_unix(0, 1_000_000_000).is_none());
    }
}
