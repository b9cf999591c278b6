//! Calls on named durable consumers in cluster mode, and the Admin calls
//! that move an endpoint's consumer (replay, retry, recover, resend): they
//! run on the primary broker (the holder of the primary lease, which also
//! delivers webhooks), whose memory holds the consumers' leases. Any other
//! broker forwards them: the same request, with the caller's `authorization`,
//! over gRPC to the primary's address, and the answer (or the stream) back
//! as it comes. The primary checks the caller again.
//!
//! A forwarded call carries [`FORWARDED`]; a broker that gets one while it
//! is not the primary (the lease moved meanwhile) answers `UNAVAILABLE`
//! rather than forwarding it again. Brokers serving TLS do not forward to
//! each other yet: the call is refused, naming the primary to call; so is
//! a call from a console session (its token is not sent on).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use tonic::{
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
    Request, Response, Status,
};

use crate::{
    auth::Caller,
    error::Error,
    pb::{admin_client::AdminClient, subscriber_client::SubscriberClient},
};

/// The header a forwarded call carries.
const FORWARDED: &str = "stevedore-forwarded";
/// How long connecting to the primary may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer taken from the primary (a Subscribe response holds
/// one event, at most `max_event_bytes`).
const MAX_ANSWER: usize = 64 << 20;

/// A channel to the primary at `url` (its lease's value), for a call that
/// came with `metadata`.
pub(crate) async fn to_primary(url: &str, metadata: &MetadataMap) -> Result<Channel, Status> {
    if metadata.contains_key(FORWARDED) {
        return Err(Error::Unavailable(
            "the primary broker changed while this call was forwarded: try again".into(),
        )
        .into());
    }
    if !url.starts_with("http://") {
        return Err(Error::FailedPrecondition(format!(
            "in cluster mode, named durable consumers are served by the primary broker {url}; \
             brokers serving TLS do not forward these calls yet: send it there"
        ))
        .into());
    }
    if let Some(channel) = channels().get(url) {
        return Ok(channel.clone());
    }
    let unreachable = |e: &dyn std::fmt::Display| {
        Status::from(Error::Unavailable(format!(
            "the primary broker {url}, which serves named durable consumers, cannot be reached: \
             {e}"
        )))
    };
    let channel = Endpoint::from_shared(url.to_owned())
        .map_err(|e| unreachable(&e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| unreachable(&e))?;
    // One connection per primary, for every later call (a channel
    // reconnects by itself); the primary changes seldom.
    channels().insert(url.to_owned(), channel.clone());
    Ok(channel)
}

/// The channels to the primaries this process has forwarded to.
fn channels() -> std::sync::MutexGuard<'static, HashMap<String, Channel>> {
    static CHANNELS: OnceLock<Mutex<HashMap<String, Channel>>> = OnceLock::new();
    CHANNELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// `message` as a forwarded request, with the caller's credentials from
/// `metadata`.
pub(crate) fn request<T>(metadata: &MetadataMap, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let out = request.metadata_mut();
    if let Some(auth) = metadata.get("authorization") {
        out.insert("authorization", auth.clone());
    }
    out.insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

/// Forwards an Admin call to the primary at `url`: `call` makes it on a
/// client to it.
pub(crate) async fn admin<T, R, F, Fut>(
    url: &str,
    request: Request<T>,
    call: F,
) -> Result<Response<R>, Status>
where
    F: FnOnce(AdminClient<Channel>, Request<T>) -> Fut,
    Fut: Future<Output = Result<Response<R>, Status>>,
{
    let admin = |channel| AdminClient::new(channel).max_decoding_message_size(MAX_ANSWER);
    unary(url, request, admin, call).await
}

/// Forwards a unary Subscriber call (Ack, Nack) to the primary at `url`.
pub(crate) async fn subscriber_call<T, R, F, Fut>(
    url: &str,
    request: Request<T>,
    call: F,
) -> Result<Response<R>, Status>
where
    F: FnOnce(SubscriberClient<Channel>, Request<T>) -> Fut,
    Fut: Future<Output = Result<Response<R>, Status>>,
{
    unary(url, request, subscriber, call).await
}

/// Forwards a unary call to the primary at `url`, on the client `client`
/// makes of the channel.
async fn unary<C, T, R, F, Fut>(
    url: &str,
    request: Request<T>,
    client: impl FnOnce(Channel) -> C,
    call: F,
) -> Result<Response<R>, Status>
where
    F: FnOnce(C, Request<T>) -> Fut,
    Fut: Future<Output = Result<Response<R>, Status>>,
{
    if request.extensions().get::<Caller>().is_some()
        && !request.metadata().contains_key("authorization")
    {
        // From this broker's console: its session's token stays here.
        return Err(Error::FailedPrecondition(format!(
            "in cluster mode this runs on the primary broker {url}: use that broker's console \
             (or the Admin API, which forwards it)"
        ))
        .into());
    }
    let channel = to_primary(url, request.metadata()).await?;
    let metadata = request.metadata().clone();
    let answer = call(
        client(channel),
        self::request(&metadata, request.into_inner()),
    )
    .await?;
    Ok(Response::new(answer.into_inner()))
}

/// A Subscriber client to the primary.
pub(crate) fn subscriber(channel: Channel) -> SubscriberClient<Channel> {
    SubscriberClient::new(channel).max_decoding_message_size(MAX_ANSWER)
}
