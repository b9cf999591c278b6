//! Probing an endpoint without delivering anything: a signed test request
//! sent now (SendTestEvent), and why the endpoint did or did not get an
//! event (ExplainEvent).

use std::{
    sync::{Arc, RwLock},
    time::SystemTime,
};

use super::Endpoints;
use crate::{
    delivery::{
        classify,
        endpoint::{consumer_name, EndpointSpec},
        envelope, ops, stack, worker,
    },
    error::{Error, Result},
    model::{delivery::AttemptRecord, endpoint::Explanation, EndpointId, Offset},
    tenant::Scope,
};

/// The test event's type.
const TEST_EVENT: &str = "stevedore.test";

impl Endpoints {
    /// Sends one signed test request now; nothing is stored.
    pub async fn send_test(
        &self,
        scope: &Scope,
        id: &EndpointId,
    ) -> Result<(String, AttemptRecord, bool)> {
        let record = self.record(scope, id)?;
        let spec = EndpointSpec::validate(&record.endpoint, &self.config)?;
        let msg_id = format!("test_{}", ulid::Ulid::new());
        let mut event = ops::event(
            TEST_EVENT,
            id.as_str(),
            "",
            ops::fields([
                ("endpointId", ops::s(id.as_str())),
                ("message", ops::s("stevedore test event")),
            ]),
        )
        .event;
        event.id = msg_id.clone();
        // A custom event with a payload and string fields only: rendering
        // it cannot fail.
        let body = crate::webhook::render_body(&event).expect("the test event renders");
        let body = if spec.envelope {
            envelope::wrap(TEST_EVENT, event.occurred_at.as_ref(), &body).to_vec()
        } else {
            body
        };
        let request = stack::WebhookRequest {
            uri: spec.url.clone(),
            msg_id: msg_id.clone(),
            headers: stack::base_headers(TEST_EVENT, &msg_id, &spec.headers),
            body: body.into(),
            timeout: spec.timeout_for(TEST_EVENT, &self.config),
            keys: Arc::new(RwLock::new(record.keys())),
        };
        let client = self.supervisor.client_for(&spec, 1);
        let started = SystemTime::now();
        let clock = std::time::Instant::now();
        let service = stack::build(client, 1, None, self.supervisor.tokens_for(&spec));
        let result = stack::send(service, request).await;
        let latency = clock.elapsed();
        let delivered = classify::classify(&result, self.config.max_retry_after)
            == classify::Verdict::Delivered;
        Ok((
            msg_id,
            worker::attempt_record(1, started, latency, &result),
            delivered,
        ))
    }

    /// Why endpoint `id` did or did not get the event at `offset`.
    pub fn explain(&self, scope: &Scope, id: &EndpointId, offset: Offset) -> Result<Explanation> {
        let record = self.record(scope, id)?;
        let event = scope.local_event(&self.store, offset)?;
        let mut out = Explanation {
            offset,
            event_type: event.event_type.to_string(),
            matches: false,
            reason: String::new(),
            delivery: None,
        };
        let spec = EndpointSpec::validate(&record.endpoint, &self.config)?;
        if let Some(why) = spec.filter.exclusion(&event) {
            out.reason = why;
            return Ok(out);
        }
        if let Some(condition) = &spec.condition {
            let body = crate::webhook::render_body(&event.event)
                .map_err(|e| Error::Corrupt(format!("event {offset}: {e}")))?;
            let json: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Error::Corrupt(format!("event {offset}: {e}")))?;
            if !condition.matches(&json) {
                out.reason = format!(
                    "the filter `{}` does not hold for this event's body",
                    condition.source()
                );
                return Ok(out);
            }
        }
        out.matches = true;
        let delivery = self.store.deliveries().get(id, offset)?;
        let floor = self.consumers.get(&consumer_name(id))?.floor();
        out.reason = match &delivery {
            Some(d) => format!(
                "selected; its delivery is {}",
                d.state.name().trim_start_matches("DELIVERY_STATE_")
            ),
            None if offset < floor => {
                "selected, but the endpoint starts after it (created later, or replayed \
                 from a later offset)"
                    .to_owned()
            }
            None if !spec.enabled => "selected; waiting: the endpoint is disabled".to_owned(),
            None => "selected; waiting to be sent".to_owned(),
        };
        out.delivery = delivery;
        Ok(out)
    }
}
