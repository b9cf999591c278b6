//! Sending one delivery again by hand: RetryDelivery (a failed or dead
//! delivery, with a fresh schedule), re-sending any event to an endpoint
//! (the maintenance page), and rendering the request a delivery sends, as
//! the endpoint would get it now. Bulk recovery and the replay count are in
//! `recovery.rs`.

use std::{
    collections::HashSet,
    time::{Duration, SystemTime},
};

use bytes::Bytes;

use super::Endpoints;
use crate::{
    delivery::{
        endpoint::{consumer_name, endpoint_body, EndpointSpec},
        envelope, signing, stack, REDACTED,
    },
    error::{Error, Result},
    model::{
        delivery::{DeliveryRecord, DeliveryState},
        endpoint::RenderedRequest,
        time::to_unix,
        EndpointId, EventId, Offset,
    },
    tenant::Scope,
};

impl Endpoints {
    /// Sends a failed or dead delivery again now, with a fresh schedule.
    pub async fn retry_delivery(
        &self,
        scope: &Scope,
        id: &EndpointId,
        offset: Offset,
    ) -> Result<DeliveryRecord> {
        let _workers = self.supervisor.lock().await;
        self.record(scope, id)?;
        self.require_delivering(id).await?;
        let mut d = self.store.deliveries().get(id, offset)?.ok_or_else(|| {
            Error::NotFound(format!("endpoint {id} has no delivery at offset {offset}"))
        })?;
        match d.state {
            DeliveryState::Failed | DeliveryState::Dead => {}
            s => {
                return Err(Error::FailedPrecondition(format!(
                    "delivery {offset} is {}; only failed or dead deliveries can be retried",
                    s.name()
                )))
            }
        }
        let was_dead = d.state == DeliveryState::Dead;
        if was_dead {
            self.metrics.dead.add(id.as_str(), -1);
        }
        // A fresh schedule, due now.
        d.state = DeliveryState::Pending;
        d.attempts = 0;
        d.next_attempt_at = None;
        self.store.deliveries().put(id, offset, &d).await?;
        let consumer = self.consumers.get(&consumer_name(id))?;
        if was_dead {
            consumer.reopen(offset).await?;
        } else {
            // Waiting in the consumer: make it due now.
            consumer.nack(&[offset], Duration::ZERO)?;
        }
        Ok(d)
    }

    /// Sends the event at `offset` to endpoint `id` through its worker (a
    /// fresh schedule, signed like any delivery), whether or not the
    /// endpoint existed when it was published or its event types select
    /// it. Refused while the event's delivery to it is under way, and when
    /// the endpoint's filter condition excludes it (its worker would skip
    /// it).
    pub async fn resend(
        &self,
        scope: &Scope,
        id: &EndpointId,
        offset: Offset,
    ) -> Result<DeliveryRecord> {
        let _workers = self.supervisor.lock().await;
        let record = self.record(scope, id)?;
        self.require_delivering(id).await?;
        let event = scope.local_event(&self.store, offset)?;
        // An endpoint never receives another tenant's event, not even by hand.
        let tenant = crate::model::event_tenant(&event.event);
        if !record.endpoint.tenant.is_empty() && record.endpoint.tenant != tenant {
            return Err(Error::FailedPrecondition(format!(
                "event {offset} does not belong to the endpoint's tenant {:?}",
                record.endpoint.tenant
            )));
        }
        let spec = EndpointSpec::validate(&record.endpoint, &self.config)?;
        let rendered = crate::webhook::render_body(&event.event)
            .map_err(|e| Error::Corrupt(format!("event {offset}: {e}")))?;
        if endpoint_body(&spec, rendered.into())
            .map_err(|e| Error::Corrupt(format!("event {offset}: {e}")))?
            .is_none()
        {
            return Err(Error::FailedPrecondition(format!(
                "the endpoint's filter `{}` does not hold for event {offset}: its worker \
                 would skip it",
                spec.condition
                    .as_ref()
                    .map(|c| c.source())
                    .unwrap_or_default()
            )));
        }
        let existing = self.store.deliveries().get(id, offset)?;
        let is_held = || self.supervisor.is_held(id, offset);
        // A final record is written (with the ack) just before the worker
        // lets the event go: give it a moment to finish.
        if existing.as_ref().is_some_and(|d| {
            matches!(
                d.state,
                DeliveryState::Delivered | DeliveryState::Dead | DeliveryState::Superseded
            )
        }) {
            for _ in 0..50 {
                if !is_held() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let held = is_held();
        let under_way = existing.as_ref().is_some_and(|d| d.state.is_ongoing());
        if under_way || held {
            return Err(Error::FailedPrecondition(format!(
                "the delivery of event {offset} to endpoint {id} is under way; \
                 use RetryDelivery to hurry a failed one"
            )));
        }
        if existing
            .as_ref()
            .is_some_and(|d| d.state == DeliveryState::Dead)
        {
            self.metrics.dead.add(id.as_str(), -1);
        }
        // A pending record with no attempts in this round: the worker sends
        // it at once (its first delay is in the past) and numbers its
        // attempts after any earlier ones.
        let mut d = existing.unwrap_or_default();
        d.event_id = EventId::new(event.event.id.clone());
        d.event_type = event.event_type.to_string();
        d.state = DeliveryState::Pending;
        d.attempts = 0;
        d.next_attempt_at = None;
        d.superseded_by = Offset::ZERO;
        self.store.deliveries().put(id, offset, &d).await?;
        self.consumers
            .get(&consumer_name(id))?
            .reopen(offset)
            .await?;
        tracing::info!(endpoint = %id, offset = offset.get(), "event re-sent");
        d.endpoint_id = id.to_owned();
        d.offset = offset;
        Ok(d)
    }

    /// The request endpoint `id` gets for the event at `offset`, signed
    /// now with its current secret(s), at its last attempt's timestamp if it
    /// had one. Custom header values are redacted.
    pub fn render_request(
        &self,
        scope: &Scope,
        id: &EndpointId,
        offset: Offset,
    ) -> Result<RenderedRequest> {
        let record = self.record(scope, id)?;
        let event = scope.local_event(&self.store, offset)?;
        let spec = EndpointSpec::validate(&record.endpoint, &self.config)?;
        let rendered = crate::webhook::render_body(&event.event)
            .map_err(|e| Error::Corrupt(format!("event {offset}: {e}")))?;
        let body = endpoint_body(&spec, Bytes::from(rendered.clone()))
            .map_err(|e| Error::Corrupt(format!("event {offset}: {e}")))?;
        let matches = body.is_some() && spec.filter.exclusion(&event).is_none();
        // A body the filter condition excludes is shown with the field
        // selection applied all the same.
        let body = match body {
            Some(b) => b,
            None => match &spec.projection {
                Some(p) => {
                    let json: serde_json::Value = serde_json::from_slice(&rendered)
                        .map_err(|e| Error::Corrupt(format!("event {offset}: {e}")))?;
                    serde_json::to_vec(&p.apply(&json))
                        .map_err(|e| Error::Corrupt(format!("event {offset}: {e}")))?
                        .into()
                }
                None => rendered.into(),
            },
        };
        let body = if spec.envelope {
            envelope::wrap(
                event.event_type.as_str(),
                event.event.occurred_at.as_ref(),
                &body,
            )
        } else {
            body
        };
        let last_attempt = self
            .list_attempts(scope, id, offset)?
            .last()
            .and_then(|a| a.started_at);
        let timestamp = to_unix(last_attempt.unwrap_or_else(SystemTime::now)).0;
        let msg_id = signing::webhook_id(&event.event.id).into_owned();
        let keys = record.keys();
        let now = SystemTime::now();
        let previous = keys
            .previous
            .as_ref()
            .filter(|(_, until)| *until > now)
            .map(|(s, _)| s);
        let signature = signing::signature_header(
            std::iter::once(&keys.current).chain(previous),
            &msg_id,
            timestamp,
            &body,
        );
        let custom: HashSet<&str> = spec.headers.iter().map(|(n, _)| n.as_str()).collect();
        let mut headers: Vec<(String, String)> =
            stack::base_headers(event.event_type.as_str(), &event.event.id, &spec.headers)
                .iter()
                .map(|(name, value)| {
                    let value = if custom.contains(name.as_str()) {
                        REDACTED.to_owned()
                    } else {
                        String::from_utf8_lossy(value.as_bytes()).into_owned()
                    };
                    (name.as_str().to_owned(), value)
                })
                .collect();
        for (name, value) in [
            (stack::WEBHOOK_ID, msg_id.clone()),
            (stack::WEBHOOK_TIMESTAMP, timestamp.to_string()),
            (stack::WEBHOOK_SIGNATURE, signature),
        ] {
            headers.push((name.as_str().to_owned(), value));
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok(RenderedRequest {
            method: "POST".into(),
            url: spec.url.to_string(),
            headers,
            signed_content: format!("{msg_id}.{timestamp}.{body}"),
            body,
            timestamp_from_last_attempt: last_attempt.is_some(),
            matches,
        })
    }
}
