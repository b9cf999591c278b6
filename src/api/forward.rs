//! Calls that run on one broker in cluster mode: those on named durable
//! consumers run on the primary broker (the holder of the primary lease),
//! whose memory holds the consumers' leases; the Admin calls that move an
//! endpoint's consumer (replay, retry, recover, resend) and its live
//! figures run on the broker that delivers the endpoint (the holder of its
//! delivery shard's lease). Any other broker forwards them: the same
//! request, with the caller's `authorization`, over gRPC to that broker's
//! address, and the answer (or the stream) back as it comes. That broker
//! checks the caller again.
//!
//! A forwarded call carries [`FORWARDED`]; a broker that gets one while it
//! does not run the call (the lease moved meanwhile) answers `UNAVAILABLE`
//! rather than forwarding it again. Brokers serving TLS are reached over
//! TLS (`https://` in the lease), trusting `peer_ca_file`'s certificates
//! (else the public web roots) for the URL's host ([`configure`]). A
//! console session's call is forwarded with the token the session logged
//! in with (`crate::console::session`).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use tonic::{
    metadata::MetadataMap,
    transport::{Channel, ClientTlsConfig, Endpoint},
    Request, Response, Status,
};

use crate::{
    auth::Caller,
    error::Error,
    pb::{admin_client::AdminClient, subscriber_client::SubscriberClient},
};

/// The header a forwarded call carries.
const FORWARDED: &str = "stevedore-forwarded";
/// How long connecting to another broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer taken from another broker (a Subscribe response holds
/// one event, at most `max_event_bytes`).
const MAX_ANSWER: usize = 64 << 20;

/// A channel to the broker at `url` (the value of the lease it holds), for
/// a call that came with `metadata`.
pub(crate) async fn to_broker(url: &str, metadata: &MetadataMap) -> Result<Channel, Status> {
    if metadata.contains_key(FORWARDED) {
        return Err(Error::Unavailable(
            "the broker that runs this call changed while it was forwarded: try again".into(),
        )
        .into());
    }
    if let Some(channel) = channels().get(url) {
        return Ok(channel.clone());
    }
    let unreachable = |e: &dyn std::fmt::Display| {
        Status::from(Error::Unavailable(format!(
            "the broker {url}, which runs this call in cluster mode, cannot be reached: {e}"
        )))
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| unreachable(&e))?
        .connect_timeout(CONNECT_TIMEOUT);
    if url.starts_with("https://") {
        let tls = peer_tls().clone().unwrap_or_default();
        endpoint = endpoint.tls_config(tls).map_err(|e| unreachable(&e))?;
    }
    let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
    // One connection per broker, for every later call (a channel
    // reconnects by itself).
    channels().insert(url.to_owned(), channel.clone());
    Ok(channel)
}

/// Sets how this process reaches brokers serving TLS (from `peer_ca_file`,
/// [`crate::tls::peer_client_config`]); one broker runs per process, so the
/// setting is the process's, like the channels.
pub fn configure(tls: ClientTlsConfig) {
    *peer_tls() = Some(tls);
    channels().clear();
}

fn peer_tls() -> std::sync::MutexGuard<'static, Option<ClientTlsConfig>> {
    static PEER_TLS: OnceLock<Mutex<Option<ClientTlsConfig>>> = OnceLock::new();
    PEER_TLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The channels to the brokers this process has forwarded to.
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

/// Forwards an Admin call to the broker at `url`: `call` makes it on a
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

/// Forwards a unary call to the broker at `url`, on the client `client`
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
        // A caller without credentials to send on (none of the console's
        // sessions is: they keep their token).
        return Err(Error::FailedPrecondition(format!(
            "in cluster mode this runs on the broker {url}: use that broker's console \
             (or the Admin API, which forwards it)"
        ))
        .into());
    }
    let channel = to_broker(url, request.metadata()).await?;
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
