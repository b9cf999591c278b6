//! The answers the load tests queue on their receivers, and whether each one
//! counts as delivered.

use std::time::Duration;

use super::Behavior;

/// How a receiver answers one request.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Ok,
    /// 200 after this many milliseconds.
    Slow(u64),
    Fail,
    Reset,
}

impl Answer {
    /// The receiver behaviour that gives this answer.
    pub fn behavior(self) -> Behavior {
        match self {
            Answer::Ok => Behavior::Status(200),
            Answer::Slow(ms) => Behavior::Delay(Duration::from_millis(ms), 200),
            Answer::Fail => Behavior::Status(500),
            Answer::Reset => Behavior::Reset,
        }
    }

    /// A 2xx answer: the broker may count the delivery as done.
    pub fn success(self) -> bool {
        matches!(self, Answer::Ok | Answer::Slow(_))
    }
}
