//! Delivery detail: the record, every attempt, the source event and how a
//! receiver verifies the signature.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Response},
};

use super::{dur, endpoint::row, pretty, status_text, ts};
use crate::{
    console::{
        render,
        session::Sess,
        templates::{AttemptRow, DeliveryPage, Frame},
        Console,
    },
    convert,
    model::Offset,
    pb::{self, admin_server::Admin, explain_event_request::Event},
};

/// GET /endpoints/{id}/deliveries/{offset}
pub async fn page(
    State(console): State<Arc<Console>>,
    sess: Sess,
    Path((id, offset)): Path<(String, u64)>,
) -> Response {
    let admin = console.admin();
    // ExplainEvent checks the endpoint (and, with tenants, the caller's
    // right to it) and returns the delivery record.
    let explained = admin
        .explain_event(sess.request(pb::ExplainEventRequest {
            endpoint_id: id.clone(),
            event: Some(Event::Offset(offset)),
        }))
        .await;
    let explained = match explained {
        Ok(r) => r.into_inner(),
        Err(s) => return (super::http_status(&s), status_text(&s)).into_response(),
    };
    let attempts = match admin
        .list_attempts(sess.request(pb::ListAttemptsRequest {
            endpoint_id: id.clone(),
            offset,
        }))
        .await
    {
        Ok(r) => r.into_inner().attempts,
        Err(s) => return (super::http_status(&s), status_text(&s)).into_response(),
    };
    let (request, request_error) = match admin
        .render_delivery(sess.request(pb::RenderDeliveryRequest {
            endpoint_id: id.clone(),
            event: Some(pb::render_delivery_request::Event::Offset(offset)),
        }))
        .await
    {
        Ok(r) => (
            Some(convert::delivery::rendered_request_from_pb(r.into_inner())),
            String::new(),
        ),
        Err(s) => (None, status_text(&s)),
    };
    let event = match console.store.get(Offset::new(offset)).await {
        Ok(Some(e)) => match crate::webhook::render_body(&e.event) {
            Ok(body) => pretty(&body),
            Err(e) => format!("(cannot render: {e})"),
        },
        Ok(None) => "(no longer in the log: removed by retention)".into(),
        Err(e) => format!("(cannot read: {e})"),
    };
    let attempts = attempts
        .iter()
        .map(|a| AttemptRow {
            attempt: a.attempt,
            started: ts(a.started_at.as_ref()),
            latency: dur(a.latency.as_ref()),
            status: a.status,
            error: a.error.clone(),
            body: a.response_body.clone(),
        })
        .collect();
    render(DeliveryPage {
        frame: Frame {
            who: sess.who(),
            csrf: sess.csrf.clone(),
        },
        endpoint_id: id,
        offset,
        delivery: explained.delivery.as_ref().map(row),
        explanation: explained.reason,
        attempts,
        event,
        snippets: snippets(),
        request,
        request_error,
    })
}

fn snippets() -> Vec<(&'static str, String)> {
    vec![
        (
            "Python (standardwebhooks)",
            "from standardwebhooks.webhooks import Webhook\n\n\
             wh = Webhook(SECRET)  # the whsec_… secret shown at creation\n\
             payload = wh.verify(request_body, request_headers)  # raises on a bad signature"
                .into(),
        ),
        (
            "Node (standardwebhooks)",
            "import { Webhook } from \"standardwebhooks\";\n\n\
             const wh = new Webhook(SECRET);\n\
             const payload = wh.verify(rawBody, headers); // throws on a bad signature"
                .into(),
        ),
        (
            "Go (standard-webhooks)",
            "import standardwebhooks \"github.com/standard-webhooks/standard-webhooks/libraries/go\"\n\n\
             wh, _ := standardwebhooks.NewWebhook(secret)\n\
             err := wh.Verify(body, r.Header) // nil when the signature matches"
                .into(),
        ),
        (
            "Rust (hmac + sha2 + base64)",
            "let key = BASE64.decode(secret.trim_start_matches(\"whsec_\"))?;\n\
             let mut mac = Hmac::<Sha256>::new_from_slice(&key)?;\n\
             mac.update(format!(\"{id}.{timestamp}.\").as_bytes());\n\
             mac.update(&body);\n\
             let expected = BASE64.encode(mac.finalize().into_bytes());\n\
             // accept if any space-separated `v1,<sig>` in webhook-signature equals expected\n\
             // (compare in constant time) and the timestamp is within 5 minutes"
                .into(),
        ),
    ]
}
