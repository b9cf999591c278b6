//! Live: a server-sent-events tail of finished delivery attempts, for one
//! endpoint or all the caller may see.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Query, State},
    response::{
        sse::{Event, KeepAlive, Sse},
        Response,
    },
};
use tokio::sync::broadcast::error::RecvError;

use super::{rfc3339, state_name};
use crate::{
    console::{
        render,
        session::Sess,
        templates::{Frame, Live},
        Console,
    },
    convert,
    pb::{self, admin_server::Admin},
};

#[derive(serde::Deserialize, Default)]
pub struct Which {
    #[serde(default)]
    endpoint: String,
}

/// GET /live
pub async fn page(sess: Sess, Query(which): Query<Which>) -> Response {
    render(Live {
        frame: Frame {
            who: sess.who(),
            csrf: sess.csrf.clone(),
        },
        endpoint: which.endpoint,
    })
}

/// GET /live/events: `event: delivery` frames with the record as JSON. A
/// record is sent only when the caller may see its endpoint (asked of the
/// Admin service once per endpoint and stream). Ends at shutdown.
pub async fn events(
    State(console): State<Arc<Console>>,
    sess: Sess,
    Query(which): Query<Which>,
) -> Sse<impl tokio_stream::Stream<Item = Result<Event, Infallible>>> {
    let mut outcomes = console.endpoints.watch_outcomes();
    let shutdown = console.shutdown.clone();
    let stream = async_stream(move |tx| async move {
        let mut visible: HashMap<String, bool> = HashMap::new();
        loop {
            let d = tokio::select! {
                () = shutdown.cancelled() => return,
                r = outcomes.recv() => match r {
                    Ok(d) => d,
                    Err(RecvError::Lagged(n)) => {
                        let e = Event::default().event("lagged").data(n.to_string());
                        if tx.send(Ok(e)).await.is_err() { return; }
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            if !which.endpoint.is_empty() && d.endpoint_id.as_str() != which.endpoint {
                continue;
            }
            let ok = match visible.get(d.endpoint_id.as_str()) {
                Some(ok) => *ok,
                None => {
                    let ok = console
                        .admin()
                        .get_endpoint(sess.request(pb::GetEndpointRequest {
                            id: d.endpoint_id.as_str().to_owned(),
                        }))
                        .await
                        .is_ok();
                    visible.insert(d.endpoint_id.as_str().to_owned(), ok);
                    ok
                }
            };
            if !ok {
                continue;
            }
            let json = serde_json::json!({
                "time": rfc3339(std::time::SystemTime::now()),
                "endpoint_id": d.endpoint_id.as_str(),
                "offset": d.offset.get(),
                "event_id": d.event_id.as_str(),
                "event_type": d.event_type,
                "state": state_name(convert::delivery::state_to_pb(d.state) as i32),
                "attempts": d.attempts,
                "last_status": d.last_status,
                "last_error": d.last_error,
            });
            let e = Event::default().event("delivery").data(json.to_string());
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A stream fed by a task (no stream-macro dependency): the task ends when
/// the client goes (the channel closes) or `f` returns.
fn async_stream<F, Fut>(f: F) -> tokio_stream::wrappers::ReceiverStream<Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
