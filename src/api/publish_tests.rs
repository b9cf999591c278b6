//! How a PublishStream reader folds the requests that are already there
//! into one append ([`Bulk`]). The streams here are `futures`' (always
//! ready): `tokio_stream::iter` pauses every 32 items to yield.

use tokio_stream::StreamExt as _;

use super::*;
use crate::store::test_event;

fn request(id: &str) -> Result<PublishRequest, Status> {
    Ok(PublishRequest {
        event: Some(test_event(id).event),
    })
}

/// What the service's validation does, for these tests: an event whose id
/// starts with `bad` is refused.
fn validate(req: PublishRequest) -> Result<NewEvent, Error> {
    let id = req.event.map(|e| e.id).unwrap_or_default();
    match id.starts_with("bad") {
        true => Err(Error::invalid("event.id", "refused by the test")),
        false => Ok(test_event(&id)),
    }
}

async fn read<S>(requests: &mut S) -> (Bulk, End)
where
    S: Stream<Item = Result<PublishRequest, Status>> + Unpin,
{
    let first = requests.next().await;
    Bulk::read(first, requests, validate).await
}

#[tokio::test]
async fn requests_already_there_make_one_bulk_up_to_its_cap() {
    let n = STREAM_BULK_EVENTS + 10;
    let mut requests = futures::stream::iter((0..n).map(|i| request(&format!("e{i}"))));
    let (bulk, end) = read(&mut requests).await;
    assert!(matches!(end, End::More));
    let want: Vec<String> = (0..STREAM_BULK_EVENTS).map(|i| format!("e{i}")).collect();
    assert_eq!(bulk.ids, want);
    assert_eq!(bulk.events.len(), STREAM_BULK_EVENTS);
    let (bulk, end) = read(&mut requests).await;
    assert!(matches!(end, End::Input), "the input ended");
    let want: Vec<String> = (STREAM_BULK_EVENTS..n).map(|i| format!("e{i}")).collect();
    assert_eq!(bulk.ids, want);
}

#[tokio::test]
async fn a_bulk_never_waits_for_a_request_that_is_not_there() {
    let mut requests = futures::stream::iter((0..3).map(|i| request(&format!("e{i}"))))
        .chain(futures::stream::pending());
    let (bulk, end) = read(&mut requests).await;
    assert!(matches!(end, End::More));
    assert_eq!(bulk.ids, ["e0", "e1", "e2"]);
}

#[tokio::test]
async fn a_bulk_is_capped_in_bytes() {
    // Ids of 2 KiB: each event carries its id twice (as its ordering key
    // too), so a few dozen fill the bulk's bytes long before its count.
    let id = |i: usize| format!("{i:04}{}", "x".repeat(2048));
    let size = test_event(&id(0)).event.encoded_len();
    let fit = STREAM_BULK_BYTES.div_ceil(size);
    assert!(fit < STREAM_BULK_EVENTS, "the test's events are too small");
    let mut requests = futures::stream::iter((0..STREAM_BULK_EVENTS).map(|i| request(&id(i))));
    let (bulk, end) = read(&mut requests).await;
    assert!(matches!(end, End::More));
    assert_eq!(bulk.events.len(), fit);
    assert!(bulk.bytes >= STREAM_BULK_BYTES && bulk.bytes < STREAM_BULK_BYTES + size);
}

#[tokio::test]
async fn a_refused_request_ends_the_bulk_after_the_ones_before_it() {
    let mut requests = futures::stream::iter(
        ["e0", "e1", "bad2", "e3"]
            .into_iter()
            .map(request)
            .chain([Err(Status::internal("never read"))]),
    );
    let (bulk, end) = read(&mut requests).await;
    assert_eq!(bulk.ids, ["e0", "e1"]);
    match end {
        End::Failed(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("event.id"), "{status:?}");
        }
        End::More | End::Input => panic!("the refusal ends the stream"),
    }
    // A broken message (tonic's decoding error) ends it the same way.
    let mut requests = futures::stream::iter([request("e0"), Err(Status::internal("broken"))]);
    let (bulk, end) = read(&mut requests).await;
    assert_eq!(bulk.ids, ["e0"]);
    assert!(matches!(end, End::Failed(s) if s.message() == "broken"));
}
