//! Endpoint detail: settings, deliveries by state with paging, and the
//! actions (pause/resume, rotate, test, retry, replay, delete).

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
};

use super::{dur, endpoint_state, state_name, status_text, ts, FormData};
use crate::{
    console::{
        render,
        session::Sess,
        templates::{DeliveryRow, EndpointPage, Frame, Secret},
        Console,
    },
    pb::{self, admin_server::Admin, DeliveryState},
};

/// Deliveries shown per page.
const PAGE: u32 = 50;

#[derive(serde::Deserialize, Default)]
pub struct Filter {
    #[serde(default)]
    state: String,
    #[serde(default)]
    page: String,
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    event_id: String,
    /// Publish time range, RFC 3339 (empty: open).
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

impl Filter {
    /// The filter fields of a posted form (the retry-all forms carry them).
    fn from_form(form: &FormData) -> Self {
        let f = |k: &str| form.get(k).trim().to_owned();
        Self {
            state: f("state"),
            page: String::new(),
            event_type: f("event_type"),
            event_id: f("event_id"),
            since: f("since"),
            until: f("until"),
        }
    }

    /// The query string that keeps the filter (without the page).
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("state", &self.state),
            ("event_type", &self.event_type),
            ("event_id", &self.event_id),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }

    fn times(
        &self,
    ) -> Result<
        (
            Option<prost_types::Timestamp>,
            Option<prost_types::Timestamp>,
        ),
        tonic::Status,
    > {
        let t = |field: &str, v: &str| {
            if v.trim().is_empty() {
                Ok(None)
            } else {
                super::form::parse_time(field, v.trim()).map(Some)
            }
        };
        Ok((t("since", &self.since)?, t("until", &self.until)?))
    }

    /// Whether "retry all matching" applies: RecoverDeliveries takes the
    /// state (failed/dead), type and time range, not an event id.
    fn recoverable(&self) -> bool {
        self.event_id.is_empty() && matches!(self.state.as_str(), "" | "failed" | "dead")
    }
}

/// A delivery record as a table row.
pub fn row(d: &pb::Delivery) -> DeliveryRow {
    DeliveryRow {
        offset: d.offset,
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        state: state_name(d.state),
        attempts: d.attempts,
        last: ts(d.last_attempt_at.as_ref()),
        last_status: d.last_status,
        last_error: d.last_error.clone(),
        next: ts(d.next_attempt_at.as_ref()),
    }
}

fn parse_state(s: &str) -> Option<DeliveryState> {
    Some(match s {
        "pending" => DeliveryState::Pending,
        "delivered" => DeliveryState::Delivered,
        "failed" => DeliveryState::Failed,
        "dead" => DeliveryState::Dead,
        "superseded" => DeliveryState::Superseded,
        _ => return None,
    })
}

/// GET /endpoints/{id}
pub async fn page(
    State(console): State<Arc<Console>>,
    sess: Sess,
    Path(id): Path<String>,
    Query(filter): Query<Filter>,
) -> Response {
    show(
        &console,
        &sess,
        &id,
        &filter,
        String::new(),
        String::new(),
        String::new(),
        None,
    )
    .await
}

// `..Default::default()` in requests: the Admin API gains fields (e.g.
// ListDeliveries' ordering_key) that the console leaves unset. Eight
// arguments: the page plus what the last action left to show (message,
// error, test outcome, retry-all dry-run count).
#[allow(clippy::needless_update, clippy::too_many_arguments)]
async fn show(
    console: &Console,
    sess: &Sess,
    id: &str,
    filter: &Filter,
    message: String,
    mut error: String,
    test_result: String,
    recover: Option<(u64, bool)>,
) -> Response {
    let endpoint = match console
        .admin()
        .get_endpoint(Console::request(
            &sess.caller,
            pb::GetEndpointRequest { id: id.into() },
        ))
        .await
    {
        Ok(r) => r.into_inner().endpoint.unwrap_or_default(),
        Err(s) => return (super::http_status(&s), status_text(&s)).into_response(),
    };
    let state = parse_state(&filter.state);
    let listed = match filter.times() {
        Ok((since, until)) => {
            console
                .admin()
                .list_deliveries(Console::request(
                    &sess.caller,
                    pb::ListDeliveriesRequest {
                        endpoint_id: id.into(),
                        state: state.map_or(0, |s| s as i32),
                        page_size: PAGE,
                        page_token: filter.page.clone(),
                        event_type: filter.event_type.clone(),
                        event_id: filter.event_id.clone(),
                        since,
                        until,
                        ..Default::default()
                    },
                ))
                .await
        }
        Err(s) => Err(s),
    };
    let (deliveries, next_page) = match listed {
        Ok(r) => {
            let r = r.into_inner();
            (r.deliveries.iter().map(row).collect(), r.next_page_token)
        }
        Err(s) => {
            if error.is_empty() {
                error = status_text(&s);
            }
            (Vec::new(), String::new())
        }
    };
    let (state_label, reason) = endpoint_state(&endpoint, console.auto_disable_after);
    let e = &endpoint;
    let mut headers: Vec<&String> = e.headers.keys().collect();
    headers.sort();
    let settings = vec![
        (
            "event types",
            if e.event_types.is_empty() {
                "all".into()
            } else {
                e.event_types.join(", ")
            },
        ),
        (
            "attribute filters",
            e.attribute_filters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("filter", e.filter.clone()),
        ("fields", e.fields.join(", ")),
        // Names only: values never reach the browser.
        (
            "custom headers",
            headers
                .iter()
                .map(|h| h.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("timeout", dur(e.timeout.as_ref())),
        (
            "retry schedule",
            e.retry_schedule
                .iter()
                .map(|d| dur(Some(d)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("max in flight", e.max_in_flight.to_string()),
        ("ordering", super::form::ordering_name(e.ordering).into()),
        ("coalesce", e.coalesce.to_string()),
        (
            "rate limit",
            if e.rate_limit > 0.0 {
                format!("{}/s, burst {}", e.rate_limit, e.rate_burst)
            } else {
                "none".into()
            },
        ),
        (
            "signing secret",
            match &e.previous_secret_expires_at {
                Some(until) => format!(
                    "rotated: requests carry a signature with the previous secret too, until {}",
                    ts(Some(until))
                ),
                None => "one secret".into(),
            },
        ),
        ("created", ts(e.created_at.as_ref())),
        ("updated", ts(e.updated_at.as_ref())),
    ];
    render(EndpointPage {
        frame: Frame {
            who: sess.who(),
            csrf: sess.csrf.clone(),
        },
        id: id.into(),
        url: e.url.clone(),
        description: e.description.clone(),
        state: state_label,
        reason,
        backlog: e.backlog,
        settings,
        filter_state: filter.state.clone(),
        filter_event_type: filter.event_type.clone(),
        filter_event_id: filter.event_id.clone(),
        filter_since: filter.since.clone(),
        filter_until: filter.until.clone(),
        filter_query: filter.query(),
        recoverable: filter.recoverable(),
        recover_matched: recover.map(|r| r.0),
        recover_more: recover.is_some_and(|r| r.1),
        deliveries,
        next_page,
        message,
        error,
        test_result,
    })
}

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
                .rotate_endpoint_secret(Console::request(
                    &sess.caller,
                    pb::RotateEndpointSecretRequest {
                        id: id.clone(),
                        grace_period: prost_types::Duration::try_from(grace).ok(),
                    },
                ))
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
                .send_test_event(Console::request(
                    &sess.caller,
                    pb::SendTestEventRequest {
                        endpoint_id: id.clone(),
                    },
                ))
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
                .retry_delivery(Console::request(
                    &sess.caller,
                    pb::RetryDeliveryRequest {
                        endpoint_id: id.clone(),
                        offset,
                    },
                ))
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
                    .replay_endpoint(Console::request(
                        &sess.caller,
                        pb::ReplayEndpointRequest {
                            endpoint_id: id.clone(),
                            start: Some(start),
                            dry_run,
                        },
                    ))
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
                .delete_endpoint(Console::request(
                    &sess.caller,
                    pb::DeleteEndpointRequest { id: id.clone() },
                ))
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
        .recover_deliveries(Console::request(
            &sess.caller,
            pb::RecoverDeliveriesRequest {
                endpoint_id: id.into(),
                since,
                until,
                states,
                event_type: filter.event_type.clone(),
                dry_run,
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[allow(clippy::needless_update)]
fn req_update(sess: &Sess, id: &str, enabled: bool) -> tonic::Request<pb::UpdateEndpointRequest> {
    Console::request(
        &sess.caller,
        pb::UpdateEndpointRequest {
            endpoint: Some(pb::Endpoint {
                id: id.into(),
                enabled: Some(enabled),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
            ..Default::default()
        },
    )
}
