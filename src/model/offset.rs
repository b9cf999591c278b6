//! [`Offset`]: a position in the event log.
//!
//! A newtype rather than a bare `u64` so that an offset cannot be mixed up
//! with a count, a sequence number of another stream or a time. The wire's
//! `u64` becomes an `Offset` at the edge (`api/`, `convert/`) and in the
//! storage encodings (`store/`), through [`Offset::new`] and [`Offset::get`].
//!
//! The arithmetic is that of positions and distances: an offset plus or
//! minus a count is an offset, the difference of two offsets is a count;
//! two offsets cannot be added. It overflows as `u64` does (a panic in debug
//! builds), as the bare `u64` did.

use std::{
    fmt,
    ops::{Add, AddAssign, Sub, SubAssign},
};

/// A position in the log. Offsets start at 1 ([`Offset::FIRST`]) and are
/// dense; [`Offset::ZERO`] is the position before the first event (an empty
/// log's head, a cursor that has acknowledged nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(u64);

impl Offset {
    /// Before the first event: the head of an empty log.
    pub const ZERO: Self = Self(0);
    /// The first offset of an empty log.
    pub const FIRST: Self = Self(1);
    /// The largest offset: "to the end" as the upper bound of a range.
    pub const MAX: Self = Self(u64::MAX);

    /// The offset numbered `n` (as on the wire and in the stored encodings).
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The offset's number (for the wire and the stored encodings).
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The offset after this one (saturating at [`Offset::MAX`]).
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// The offset before this one (saturating at [`Offset::ZERO`]).
    #[must_use]
    pub const fn prev(self) -> Self {
        Self(self.0.saturating_sub(1))
    }

    /// `n` offsets after this one (saturating at [`Offset::MAX`]).
    #[must_use]
    pub const fn saturating_add(self, n: u64) -> Self {
        Self(self.0.saturating_add(n))
    }

    /// `n` offsets before this one (saturating at [`Offset::ZERO`]).
    #[must_use]
    pub const fn saturating_sub(self, n: u64) -> Self {
        Self(self.0.saturating_sub(n))
    }

    /// How many offsets `self` is past `earlier`; zero if it is not (a
    /// consumer's lag: `head.distance_from(acked)`).
    pub const fn distance_from(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The offsets from this one through `last`, in order (none if `last`
    /// is before this one).
    pub fn through(self, last: Self) -> impl DoubleEndedIterator<Item = Self> {
        (self.0..=last.0).map(Self)
    }

    /// Big-endian bytes: keys sort in offset order.
    pub const fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// The offset [`Offset::to_be_bytes`] wrote.
    pub const fn from_be_bytes(bytes: [u8; 8]) -> Self {
        Self(u64::from_be_bytes(bytes))
    }
}

/// The bare number, as log lines, errors, JSON and headers have always
/// printed an offset.
impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// `n` offsets after this one.
impl Add<u64> for Offset {
    type Output = Self;
    fn add(self, n: u64) -> Self {
        Self(self.0 + n)
    }
}

impl AddAssign<u64> for Offset {
    fn add_assign(&mut self, n: u64) {
        self.0 += n;
    }
}

/// `n` offsets before this one.
impl Sub<u64> for Offset {
    type Output = Self;
    fn sub(self, n: u64) -> Self {
        Self(self.0 - n)
    }
}

impl SubAssign<u64> for Offset {
    fn sub_assign(&mut self, n: u64) {
        self.0 -= n;
    }
}

/// How many offsets lie between two: `later - earlier`.
impl Sub for Offset {
    type Output = u64;
    fn sub(self, earlier: Self) -> u64 {
        self.0 - earlier.0
    }
}

#[cfg(test)]
mod tests {
    use super::Offset;

    #[test]
    fn orders_by_number() {
        let mut offsets = [Offset::new(10), Offset::MAX, Offset::FIRST, Offset::ZERO];
        offsets.sort();
        assert_eq!(
            offsets,
            [Offset::ZERO, Offset::FIRST, Offset::new(10), Offset::MAX]
        );
        assert!(Offset::new(2) > Offset::FIRST);
        assert_eq!(Offset::default(), Offset::ZERO);
    }

    #[test]
    fn displays_the_bare_number() {
        assert_eq!(Offset::new(42).to_string(), "42");
        assert_eq!(format!("{:>4}", Offset::new(7)), "   7");
        assert_eq!(format!("{:020}", Offset::new(42)), "00000000000000000042");
        assert_eq!(Offset::MAX.to_string(), u64::MAX.to_string());
        assert_eq!(format!("{:?}", Offset::new(3)), "Offset(3)");
    }

    #[test]
    fn key_bytes_round_trip_and_sort_like_offsets() {
        for n in [0, 1, 255, 256, 1 << 40, u64::MAX] {
            let o = Offset::new(n);
            assert_eq!(o.to_be_bytes(), n.to_be_bytes());
            assert_eq!(Offset::from_be_bytes(o.to_be_bytes()), o);
        }
        assert!(Offset::new(255).to_be_bytes() < Offset::new(256).to_be_bytes());
    }

    #[test]
    fn steps_saturate_at_the_ends() {
        assert_eq!(Offset::FIRST.next(), Offset::new(2));
        assert_eq!(Offset::MAX.next(), Offset::MAX);
        assert_eq!(Offset::FIRST.prev(), Offset::ZERO);
        assert_eq!(Offset::ZERO.prev(), Offset::ZERO);
        assert_eq!(Offset::new(5).saturating_add(3), Offset::new(8));
        assert_eq!(Offset::new(5).saturating_sub(9), Offset::ZERO);
        assert_eq!(Offset::new(9).distance_from(Offset::new(4)), 5);
        assert_eq!(Offset::new(4).distance_from(Offset::new(9)), 0);
        assert_eq!(Offset::new(7).get(), 7);
        let run: Vec<_> = Offset::new(3).through(Offset::new(5)).collect();
        assert_eq!(run, [Offset::new(3), Offset::new(4), Offset::new(5)]);
        assert_eq!(Offset::new(5).through(Offset::new(4)).count(), 0);
    }

    #[test]
    fn positions_and_distances() {
        let mut o = Offset::new(10);
        assert_eq!(o + 5, Offset::new(15));
        assert_eq!(o - 4, Offset::new(6));
        assert_eq!(Offset::new(15) - o, 5);
        o += 2;
        assert_eq!(o, Offset::new(12));
        o -= 12;
        assert_eq!(o, Offset::ZERO);
    }
}
