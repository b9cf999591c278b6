//! The endpoint page's actions: pause/resume, rotate, test, retry, retry
//! all matching, replay (and its count) and delete.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Redirect, Response},
};

use super::{
    dur,
    endpoint::{parse_state, show, Filter},
    status_text, ts, FormData,
};
use crate::{
    console::{
        render,
        session::Sess,
        templates::{Frame, Secret},
        Console,
    },
    pb::{self, admin_server::Admin},
};

/// POST /endpoints/{id}/action: `op` = pause, resume, rotate, test, retry,
/// replay or delete. Each change is logged with the token's name.
pub async fn action(
    State(console): State<Arc<Console>>,
    sess: Sess,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let form = FormData::parse(&body);
    if let Some(r) = sess.refused(&form) {
        return r;
    }
    let op = form.get("op");
    let admin = console.admin();
    let who = sess.who();
    let filter = Filter::from_form(&form);
    let outcome: Result<String, tonic::Status> = match op {
        "pause" | "resume" => {
            let enabled = op == "resume";
            admin
                .update_endpoint(req_update(&sess, &id, enabled))
                .await
                .map(|_| format!("{}d", if enabled { "resume" } else { "pause" }))
        }
        "rotate" => {
            let grace = match crate::config::parse_duration(form.get("grace")) {
                Ok(g) => g,
                Err(e) => {
                    let msg = format!("grace_period: {e}");
                    return show(
                        &console,
                        &sess,
                        &id,
                        &filter,
                        String::new(),
                        msg,
                        String::new(),
                        None,
                    )
                    .await;
                }
            };
            let r = admin
                .rotate_endpoint_secret(sess.request(pb::RotateEndpointSecretRequest {
                    id: id.clone(),
                    grace_period: prost_types::Duration::try_from(grace).ok(),
                }))
                .await;
            match r {
                Ok(r) => {
                    let r = r.into_inner();
                    tracing::info!(token = %who, endpoint = %id, "console: rotated the signing secret");
                    return render(Secret {
                        frame: Frame {
                            who,
                            csrf: sess.csrf.clone(),
                        },
                        id,
                        secret: r.secret,
                        what: format!(
                            "New signing secret (the previous one is accepted until {})",
                            ts(r.previous_expires_at.as_ref())
                        ),
                    });
                }
                Err(s) => Err(s),
            }
        }
        "test" => {
            let r = admin
                .send_test_event(sess.request(pb::SendTestEventRequest {
                    endpoint_id: id.clone(),
                }))
                .await;
            tracing::info!(token = %who, endpoint = %id, "console: sent a test event");
            let text = match r {
                Ok(r) => {
                    let r = r.into_inner();
                    let a = r.attempt.unwrap_or_default();
                    format!(
                        "Test event {}: {} (status {}, {}{}{})",
                        r.webhook_id,
                        if r.delivered {
                            "delivered"
                        } else {
                            "NOT delivered"
                        },
                        a.status,
                        dur(a.latency.as_ref()),
                        if a.error.is_empty() { "" } else { ", " },
                        a.error
                    )
                }
                Err(s) => format!("Test event failed: {}", status_text(&s)),
            };
            return show(
                &console,
                &sess,
                &id,
                &filter,
                String::new(),
                String::new(),
                text,
                None,
            )
            .await;
        }
        "retry" => match form.get("offset").parse::<u64>() {
            Ok(offset) => admin
                .retry_delivery(sess.request(pb::RetryDeliveryRequest {
                    endpoint_id: id.clone(),
                    offset,
                }))
                .await
                .map(|_| format!("retrying delivery {offset}")),
            Err(_) => Err(tonic::Status::invalid_argument("offset: not a number")),
        },
        "recover-count" | "recover" => {
            let dry_run = op == "recover-count";
            let r = recover(&console, &sess, &id, &filter, dry_run).await;
            match r {
                Ok(r) if dry_run => {
                    let text = format!(
                        "{}{} dead/failed deliveries match: confirm below to send them again",
                        r.matched,
                        if r.more { "+" } else { "" }
                    );
                    return show(
                        &console,
                        &sess,
                        &id,
                        &filter,
                        text,
                        String::new(),
                        String::new(),
                        Some((r.matched, r.more)),
                    )
                    .await;
                }
                Ok(r) => Ok(format!(
                    "requeued {} of {} matching dead/failed deliveries{}",
                    r.requeued,
                    r.matched,
                    if r.more {
                        " (more match: retry all again for the rest)"
                    } else {
                        ""
                    }
                )),
                Err(s) => Err(s),
            }
        }
        "replay" | "delete" if form.get("confirm") != id => Err(tonic::Status::invalid_argument(
            "confirm: type the endpoint id exactly to confirm",
        )),
        "replay" | "replay-count" => {
            use pb::replay_endpoint_request::Start;
            let dry_run = op == "replay-count";
            let from = form.get("from").trim();
            let start = match from.parse::<u64>() {
                Ok(o) => Ok(Start::Offset(o)),
                Err(_) => super::form::parse_time("from", from).map(Start::Time),
            };
            match start {
                Ok(start) => admin
                    .replay_endpoint(sess.request(pb::ReplayEndpointRequest {
                        endpoint_id: id.clone(),
                        start: Some(start),
                        dry_run,
                    }))
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        if dry_run {
                            format!(
                                "a replay from offset {} would send {}{} events again (dry run: nothing changed)",
                                r.from_offset,
                                r.matching,
                                if r.more { "+" } else { "" }
                            )
                        } else {
                            format!("replaying from offset {}", r.from_offset)
                        }
                    }),
                Err(s) => Err(s),
            }
        }
        "delete" => {
            let r = admin
                .delete_endpoint(sess.request(pb::DeleteEndpointRequest { id: id.clone() }))
                .await;
            if r.is_ok() {
                tracing::info!(token = %who, endpoint = %id, "console: deleted the endpoint");
                return Redirect::to("/").into_response();
            }
            r.map(|_| String::new())
        }
        _ => Err(tonic::Status::invalid_argument("op: unknown action")),
    };
    match outcome {
        Ok(message) => {
            tracing::info!(token = %who, endpoint = %id, op, "console: {message}");
            show(
                &console,
                &sess,
                &id,
                &filter,
                message,
                String::new(),
                String::new(),
                None,
            )
            .await
        }
        Err(s) => {
            let mut r = show(
                &console,
                &sess,
                &id,
                &filter,
                String::new(),
                status_text(&s),
                String::new(),
                None,
            )
            .await;
            *r.status_mut() = super::http_status(&s);
            r
        }
    }
}

/// RecoverDeliveries with the page's filter (state, type, time range).
async fn recover(
    console: &Console,
    sess: &Sess,
    id: &str,
    filter: &Filter,
    dry_run: bool,
) -> Result<pb::RecoverDeliveriesResponse, tonic::Status> {
    if !filter.recoverable() {
        return Err(tonic::Status::invalid_argument(
            "state: retry all applies to dead/failed deliveries without an event id filter",
        ));
    }
    let (since, until) = filter.times()?;
    let states = match parse_state(&filter.state) {
        Some(s) => vec![s as i32],
        None => Vec::new(),
    };
    console
        .admin()
        .recover_deliveries(sess.request(pb::RecoverDeliveriesRequest {
            endpoint_id: id.into(),
            since,
            until,
            states,
            event_type: filter.event_type.clone(),
            dry_run,
        }))
        .await
        .map(tonic::Response::into_inner)
}

#[allow(clippy::needless_update)]
fn req_update(sess: &Sess, id: &str, enabled: bool) -> tonic::Request<pb::UpdateEndpointRequest> {
    sess.request(pb::UpdateEndpointRequest {
        endpoint: Some(pb::Endpoint {
            id: id.into(),
            enabled: Some(enabled),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["enabled".into()],
        }),
        ..Default::default()
    })
}
