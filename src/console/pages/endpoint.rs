//! Endpoint detail: settings and deliveries by state with paging (its
//! actions are in `endpoint_actions.rs`).

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
};

use super::{dur, endpoint_state, state_name, status_text, ts, FormData};
use crate::{
    console::{
        render,
        session::Sess,
        templates::{DeliveryRow, EndpointPage, Frame},
        Console,
    },
    pb::{self, admin_server::Admin, DeliveryState},
};

/// Deliveries shown per page.
const PAGE: u32 = 50;

#[derive(serde::Deserialize, Default)]
pub struct Filter {
    #[serde(default)]
    pub(super) state: String,
    #[serde(default)]
    page: String,
    #[serde(default)]
    pub(super) event_type: String,
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
    pub(super) fn from_form(form: &FormData) -> Self {
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

    pub(super) fn times(
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
    pub(super) fn recoverable(&self) -> bool {
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

pub(super) fn parse_state(s: &str) -> Option<DeliveryState> {
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
pub(super) async fn show(
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
        .get_endpoint(sess.request(pb::GetEndpointRequest { id: id.into() }))
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
                .list_deliveries(sess.request(pb::ListDeliveriesRequest {
                    endpoint_id: id.into(),
                    state: state.map_or(0, |s| s as i32),
                    page_size: PAGE,
                    page_token: filter.page.clone(),
                    event_type: filter.event_type.clone(),
                    event_id: filter.event_id.clone(),
                    since,
                    until,
                    ..Default::default()
                }))
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
