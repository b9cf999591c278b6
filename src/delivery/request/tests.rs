//! `SendError`: the variant to branch on, the cause behind `source()`, and
//! the text the attempt record keeps.

use std::error::Error as _;

use super::*;

#[derive(Debug, thiserror::Error)]
#[error("outer")]
struct Outer(#[source] std::io::Error);

#[test]
fn the_cause_chain_is_kept_and_shown() {
    let e = SendError::connect(Outer(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "refused",
    )));
    assert_eq!(e.to_string(), "connect: outer: refused");
    let cause = e.source().expect("the cause is the source");
    assert!(cause.downcast_ref::<Outer>().is_some(), "{cause:?}");
    let io = cause
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the I/O error under it");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);

    let e = SendError::transport("connection reset");
    assert_eq!(e.to_string(), "transport: connection reset");
    assert!(matches!(e, SendError::Transport(_)));
    let e = SendError::token("503 Service Unavailable from the token endpoint");
    assert_eq!(
        e.to_string(),
        "oauth2 token: 503 Service Unavailable from the token endpoint"
    );
    assert_eq!(
        SendError::Timeout(Duration::from_secs(3)).to_string(),
        "timed out after 3s"
    );
}
