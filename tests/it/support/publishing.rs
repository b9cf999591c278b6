//! Publishing by each of the three calls (`Publish`, `PublishBatch`,
//! `PublishStream`), keeping every ack received even when a call fails
//! midway: the load of the crash tests.

use stevedore::pb::{
    self, publisher_client::PublisherClient, PublishBatchRequest, PublishRequest, PublishResponse,
};
use tonic::transport::Channel;

/// PublishStream: requests outstanding before the first ack.
const STREAM_WINDOW: usize = 8;

/// Which publish call.
#[derive(Clone, Copy)]
pub enum Mode {
    Unary,
    Batch,
    Stream,
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Unary => "Publish",
        Mode::Batch => "PublishBatch",
        Mode::Stream => "PublishStream",
    }
}

pub fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Whether the log holds an event at `offset` (`GetEvent`; `NOT_FOUND`:
/// not yet), asked within `timeout`: how the crash checkers tell a slow
/// Subscribe stream from the end of the log.
pub async fn log_has_event(
    client: &mut pb::subscriber_client::SubscriberClient<Channel>,
    offset: u64,
    timeout: std::time::Duration,
) -> Result<bool, String> {
    let request = pb::GetEventRequest {
        offset,
        ..Default::default()
    };
    match tokio::time::timeout(timeout, client.get_event(request)).await {
        Err(_) => Err(format!("GetEvent({offset}) timed out")),
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(false),
        Ok(Err(s)) => Err(format!("GetEvent({offset}): {}", status_text(&s))),
        Ok(Ok(_)) => Ok(true),
    }
}

/// One publish call. Acks received are pushed to `acks` as they arrive, so a
/// call that fails (or is cancelled by a timeout) midway keeps them.
pub async fn publish_in_mode(
    client: &mut PublisherClient<Channel>,
    mode: Mode,
    events: &[pb::Event],
    acks: &mut Vec<PublishResponse>,
) -> Result<(), String> {
    let req = |e: &pb::Event| PublishRequest {
        event: Some(e.clone()),
    };
    match mode {
        Mode::Unary => {
            let r = client
                .publish(req(&events[0]))
                .await
                .map_err(|s| format!("Publish: {}", status_text(&s)))?;
            acks.push(r.into_inner());
        }
        Mode::Batch => {
            let r = client
                .publish_batch(PublishBatchRequest {
                    events: events.to_vec(),
                })
                .await
                .map_err(|s| format!("PublishBatch: {}", status_text(&s)))?;
            acks.extend(r.into_inner().results);
        }
        Mode::Stream => {
            // Pipelined: a window of requests ahead of the acks.
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_WINDOW);
            let mut sent = 0;
            // At most STREAM_WINDOW requests are un-acked, so the channel
            // never fills; it only fails once the call is torn down.
            let closed = || "PublishStream: request stream closed".to_owned();
            while sent < events.len() && sent < STREAM_WINDOW {
                tx.try_send(req(&events[sent])).map_err(|_| closed())?;
                sent += 1;
            }
            let mut responses = client
                .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| format!("PublishStream: {}", status_text(&s)))?
                .into_inner();
            while acks.len() < events.len() {
                match responses.message().await {
                    Ok(Some(r)) => {
                        acks.push(r);
                        if sent < events.len() {
                            tx.try_send(req(&events[sent])).map_err(|_| closed())?;
                            sent += 1;
                        }
                    }
                    Ok(None) => {
                        return Err(format!(
                            "PublishStream ended after {} of {} acks",
                            acks.len(),
                            events.len()
                        ))
                    }
                    Err(s) => return Err(format!("PublishStream: {}", status_text(&s))),
                }
            }
            drop(tx);
            match responses.message().await {
                Ok(None) => {}
                Ok(Some(r)) => {
                    return Err(format!("PublishStream: unexpected extra response {r:?}"))
                }
                Err(s) => return Err(format!("PublishStream close: {}", status_text(&s))),
            }
        }
    }
    Ok(())
}
