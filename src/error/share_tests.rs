//! Errors shared with several callers stay what they were, and the
//! variants of #14 (point 7) map to their codes.

use std::error::Error as _;

use super::*;

#[test]
fn shared_errors_keep_their_variant() {
    let cases = [
        Error::NotFound("endpoint e1".into()),
        Error::FailedPrecondition("disabled".into()),
        Error::PermissionDenied("tenant".into()),
        Error::Storage("sled: tree".into()),
        Error::MasterKey("no master key".into()),
        Error::Capacity("a record over 16 MiB".into()),
    ];
    for err in cases {
        let shared = err.share();
        assert_eq!(
            std::mem::discriminant(&shared),
            std::mem::discriminant(&err),
            "{err}"
        );
        assert_eq!(shared.to_string(), err.to_string());
        assert_eq!(Status::from(shared).code(), Status::from(err).code());
    }
}

#[tokio::test]
async fn a_failed_task_keeps_its_cause_and_is_internal() {
    let join = tokio::task::spawn_blocking(|| panic!("boom"))
        .await
        .unwrap_err();
    let err = Error::task("erasure", join);
    assert!(
        err.to_string().starts_with("erasure task failed: "),
        "{err}"
    );
    let cause = err.source().expect("the JoinError");
    let join = cause
        .downcast_ref::<std::sync::Arc<tokio::task::JoinError>>()
        .expect("the JoinError, shared");
    assert!(join.is_panic());
    let shared = err.share();
    assert!(matches!(
        shared,
        Error::Task {
            task: "erasure",
            ..
        }
    ));
    assert_eq!(Status::from(err).code(), Code::Internal);
}

#[test]
fn a_capacity_limit_is_resource_exhausted_not_data_loss() {
    let status = Status::from(Error::Capacity(
        "event log: a replacement of record 7 is too large".into(),
    ));
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "event log: a replacement of record 7 is too large"
    );
}
