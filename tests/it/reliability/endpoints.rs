//! The five endpoints of the test, their filters, and their creation.

use stevedore::pb::{self, admin_client::AdminClient, CreateEndpointRequest, Endpoint};

use super::{
    events::{event_type, lane},
    ATTEMPT_TIMEOUT_MS, CALL_TIMEOUT, CUSTOM_TYPE, FLAKY_SCHEDULE_MS, HEALTHY_SCHEDULE_MS,
};
use crate::support::{connect, ms, status_text, HOOK_PATH};

/// One endpoint of the test: its name (the `ep` query parameter of its
/// URL), its receiver and its filters.
pub(super) struct EpSpec {
    pub(super) name: &'static str,
    pub(super) flaky: bool,
    pub(super) event_types: &'static [&'static str],
    /// `attribute_filters: {lane: ...}`.
    pub(super) lane: Option<&'static str>,
    pub(super) ordering: pb::Ordering,
}

impl EpSpec {
    pub(super) fn matches(&self, seq: u64) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event_type(seq)))
            && self.lane.is_none_or(|l| l == lane(seq))
    }

    pub(super) fn path(&self) -> String {
        format!("{HOOK_PATH}?ep={}", self.name)
    }
}

pub(super) const ENDPOINTS: [EpSpec; 5] = [
    EpSpec {
        name: "all",
        flaky: false,
        event_types: &[],
        lane: None,
        ordering: pb::Ordering::Key,
    },
    EpSpec {
        name: "picks",
        flaky: false,
        event_types: &["pick.confirmed"],
        lane: None,
        ordering: pb::Ordering::Key,
    },
    EpSpec {
        name: "stock",
        flaky: false,
        event_types: &["inventory.updated", CUSTOM_TYPE],
        lane: None,
        ordering: pb::Ordering::None,
    },
    EpSpec {
        name: "even",
        flaky: false,
        event_types: &[],
        lane: Some("even"),
        ordering: pb::Ordering::Key,
    },
    EpSpec {
        name: "flaky",
        flaky: true,
        event_types: &[],
        lane: None,
        ordering: pb::Ordering::Key,
    },
];

/// An endpoint as created.
pub(super) struct Ep {
    pub(super) spec: &'static EpSpec,
    pub(super) id: String,
    pub(super) secret: String,
}

pub(super) async fn create_endpoints(
    addr: &str,
    healthy: &str,
    flaky: &str,
) -> Result<Vec<Ep>, String> {
    let mut admin = AdminClient::new(connect(addr).await?);
    let mut out = Vec::new();
    for spec in &ENDPOINTS {
        let (url, schedule) = if spec.flaky {
            (flaky, FLAKY_SCHEDULE_MS)
        } else {
            (healthy, HEALTHY_SCHEDULE_MS)
        };
        let endpoint = Endpoint {
            url: format!("{url}?ep={}", spec.name),
            description: format!("reliability test endpoint {}", spec.name),
            event_types: spec.event_types.iter().map(|t| (*t).to_owned()).collect(),
            attribute_filters: spec
                .lane
                .map(|l| [("lane".to_owned(), l.to_owned())].into())
                .unwrap_or_default(),
            retry_schedule: schedule.iter().map(|&n| ms(n)).collect(),
            timeout: Some(ms(ATTEMPT_TIMEOUT_MS)),
            ordering: spec.ordering as i32,
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
        .map_err(|s| format!("CreateEndpoint({}): {}", spec.name, status_text(&s)))?
        .into_inner();
        let id = r.endpoint.map(|e| e.id).unwrap_or_default();
        if id.is_empty() || !r.secret.starts_with("whsec_") {
            return Err(format!(
                "CreateEndpoint({}) returned id {id:?} and a secret without whsec_",
                spec.name
            ));
        }
        out.push(Ep {
            spec,
            id,
            secret: r.secret,
        });
    }
    Ok(out)
}
