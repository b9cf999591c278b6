//! The test's endpoints over the Admin API, and what the broker says about
//! deliveries the receiver never saw.

use std::collections::HashMap;

use stevedore::pb::{
    self, admin_client::AdminClient, CreateEndpointRequest, DeliveryState, Endpoint,
};
use tonic::transport::Channel;

use super::{ATTEMPT_TIMEOUT, CALL_TIMEOUT, SCHEDULE_MS};
use crate::support::{attempts_within, count_by_state, list_deliveries, ms, status_text, Receiver};

/// One endpoint of the test.
pub(super) struct Ep {
    pub(super) name: &'static str,
    pub(super) id: String,
    pub(super) secret: String,
}

pub(super) async fn create_endpoint(
    admin: &mut AdminClient<Channel>,
    url: &str,
    name: &'static str,
) -> Result<Ep, String> {
    let endpoint = Endpoint {
        url: format!("{url}?ep={name}"),
        description: format!("crash delivery test endpoint {name}"),
        retry_schedule: SCHEDULE_MS.iter().map(|&n| ms(n)).collect(),
        timeout: Some(ms(ATTEMPT_TIMEOUT.as_millis() as u64)),
        ..Default::default()
    };
    let r = tokio::time::timeout(
        CALL_TIMEOUT,
        admin.create_endpoint(CreateEndpointRequest {
            endpoint: Some(endpoint),
        }),
    )
    .await
    .map_err(|_| format!("CreateEndpoint timed out after {CALL_TIMEOUT:?}"))?
    .map_err(|s| format!("CreateEndpoint: {}", status_text(&s)))?
    .into_inner();
    let id = r.endpoint.map(|e| e.id).unwrap_or_default();
    if id.is_empty() || !r.secret.starts_with("whsec_") {
        return Err(format!(
            "CreateEndpoint returned id {id:?} and a secret without whsec_"
        ));
    }
    Ok(Ep {
        name,
        id,
        secret: r.secret,
    })
}

/// What the broker says about deliveries the receiver never saw.
pub(super) async fn explain_missing(
    admin: &mut AdminClient<Channel>,
    ep: &Ep,
    missing: &[(u64, String)],
    rx: &Receiver,
) -> String {
    let mut out = String::new();
    let all = match list_deliveries(admin, &ep.id, DeliveryState::Unspecified).await {
        Ok(d) => d,
        Err(e) => return format!("    (ListDeliveries failed: {e})\n"),
    };
    let by_offset: HashMap<u64, &pb::Delivery> = all.iter().map(|d| (d.offset, d)).collect();
    let states = count_by_state(&all);
    out.push_str(&format!("    delivery records by state: {states:?}\n"));
    let requests = rx.requests();
    for (offset, id) in missing.iter().take(10) {
        let other: Vec<&str> = requests
            .iter()
            .filter(|r| r.header("webhook-id") == Some(id.as_str()))
            .map(|r| r.path.as_str())
            .collect();
        out.push_str(&format!(
            "    offset {offset} ({id}): record {:?}; requests for this id at any endpoint: {other:?}\n",
            by_offset.get(offset)
        ));
    }
    for (offset, _) in missing.iter().take(3) {
        let attempts = attempts_within(admin, &ep.id, *offset).await;
        out.push_str(&format!("    attempts of offset {offset}: {attempts:?}\n"));
    }
    out
}
