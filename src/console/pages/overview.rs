//! Overview: every endpoint with its state and backlog.

use std::sync::Arc;

use axum::{extract::State, response::Response};

use super::{endpoint_state, status_text};
use crate::{
    console::{
        render,
        session::Sess,
        templates::{EndpointRow, Frame, Overview},
        Console,
    },
    pb::{self, admin_server::Admin},
};

/// Every endpoint the caller may see (the Admin service pages them).
pub async fn all_endpoints(
    console: &Console,
    sess: &Sess,
) -> Result<Vec<pb::Endpoint>, tonic::Status> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    // Bounded: 100 pages of 1000.
    for _ in 0..100 {
        let r = console
            .admin()
            .list_endpoints(Console::request(
                &sess.caller,
                pb::ListEndpointsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                },
            ))
            .await?
            .into_inner();
        out.extend(r.endpoints);
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    Ok(out)
}

/// GET /
pub async fn page(State(console): State<Arc<Console>>, sess: Sess) -> Response {
    let (endpoints, error) = match all_endpoints(&console, &sess).await {
        Ok(e) => (e, String::new()),
        Err(s) => (Vec::new(), status_text(&s)),
    };
    let endpoints = endpoints
        .iter()
        .map(|e| {
            let (state, reason) = endpoint_state(e, console.auto_disable_after);
            EndpointRow {
                id: e.id.clone(),
                url: e.url.clone(),
                description: e.description.clone(),
                state,
                reason,
                backlog: e.backlog,
                event_types: if e.event_types.is_empty() {
                    "all".into()
                } else {
                    e.event_types.join(", ")
                },
            }
        })
        .collect();
    render(Overview {
        frame: Frame {
            who: sess.who(),
            csrf: sess.csrf.clone(),
        },
        endpoints,
        error,
    })
}
