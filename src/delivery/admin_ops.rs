//! Admin operations over an endpoint's deliveries that the maintenance page
//! needs besides the basic ones in `mod.rs`: filtered listing, re-sending
//! one event, and rendering the request a delivery sends (bulk recovery and
//! the replay count are in `recovery.rs`). Kept apart from `mod.rs` so the endpoint
//! lifecycle stays readable there.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime},
};

use bytes::Bytes;

use super::{
    consumer_name, endpoint::EndpointSpec, keys_of, signing, stack, worker, Deliveries, REDACTED,
};
use crate::{
    convert,
    error::{Error, Result},
    model::Offset,
    pb::{self, DeliveryState},
    tenant::Scope,
};

/// Which deliveries to list: every set field must match.
#[derive(Debug, Default, Clone)]
pub struct DeliveryQuery {
    /// Of this state.
    pub state: Option<DeliveryState>,
    /// Of this event type.
    pub event_type: Option<String>,
    /// Of events with this ordering key.
    pub ordering_key: Option<String>,
    /// Of events at offsets in `from..until` (publish times map to offsets:
    /// they never decrease along the log).
    pub from: Offset,
    /// See `from`.
    pub until: Offset,
}

impl DeliveryQuery {
    /// Every delivery.
    pub fn all() -> Self {
        Self {
            until: Offset::MAX,
            ..Default::default()
        }
    }
}

/// `rendered` as endpoint `spec` sends it: `None` when its filter condition
/// does not hold, else the body with its field selection applied. The
/// shared rendering is never modified.
pub fn endpoint_body(
    spec: &EndpointSpec,
    rendered: Bytes,
) -> std::result::Result<Option<Bytes>, String> {
    if spec.condition.is_none() && spec.projection.is_none() {
        return Ok(Some(rendered));
    }
    let json: serde_json::Value = serde_json::from_slice(&rendered).map_err(|e| e.to_string())?;
    if spec.condition.as_ref().is_some_and(|c| !c.matches(&json)) {
        return Ok(None);
    }
    match &spec.projection {
        None => Ok(Some(rendered)),
        Some(p) => Ok(Some(
            serde_json::to_vec(&p.apply(&json))
                .map_err(|e| e.to_string())?
                .into(),
        )),
    }
}

impl Deliveries {
    /// Attempts per endpoint and minute, as the workers report them.
    pub fn endpoint_stats(&self) -> &super::stats::EndpointStats {
        &self.metrics.endpoint_stats
    }

    /// Delivery records matching `q`, newest first, before `before` (a page
    /// token: the last offset of the previous page). Events a worker holds
    /// that have no record yet are listed as pending.
    pub fn query_deliveries(
        &self,
        scope: &Scope,
        id: &str,
        q: &DeliveryQuery,
        page_size: usize,
        before: Option<Offset>,
    ) -> Result<(Vec<pb::Delivery>, Option<Offset>)> {
        self.record(scope, id)?;
        let upper = before.map_or(q.until, |b| b.min(q.until));
        if q.from >= upper {
            return Ok((Vec::new(), None));
        }
        let ordering_key_is = |offset: Offset| -> Result<bool> {
            match &q.ordering_key {
                None => Ok(true),
                Some(k) => Ok(self
                    .store
                    .get(offset)?
                    .is_some_and(|e| &e.event.ordering_key == k)),
            }
        };
        let mut out: Vec<pb::Delivery> = Vec::new();
        let held: HashMap<Offset, worker::HeldView> = self
            .views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|v| v.held.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        let mut seen = HashSet::new();
        for kv in self.store.deliveries().range(id, q.from, upper).rev() {
            let (offset, mut d) = kv?;
            d.endpoint_id = id.to_owned();
            d.offset = offset;
            d.webhook_id = signing::webhook_id(&d.event_id).into_owned();
            seen.insert(offset);
            if q.state.is_none_or(|s| d.state() == s)
                && q.event_type.as_ref().is_none_or(|t| &d.event_type == t)
                && ordering_key_is(offset)?
            {
                out.push(d);
                // Held events may still sort in between: enough for a page
                // whatever they are.
                if out.len() > page_size + held.len() {
                    break;
                }
            }
        }
        if q.state.is_none_or(|s| s == DeliveryState::Pending) {
            for (&offset, h) in &held {
                if !seen.contains(&offset)
                    && (q.from..upper).contains(&offset)
                    && q.event_type.as_ref().is_none_or(|t| &h.event_type == t)
                    && ordering_key_is(offset)?
                {
                    out.push(pb::Delivery {
                        endpoint_id: id.to_owned(),
                        offset,
                        event_id: h.event_id.clone(),
                        webhook_id: signing::webhook_id(&h.event_id).into_owned(),
                        event_type: h.event_type.clone(),
                        state: DeliveryState::Pending as i32,
                        ..Default::default()
                    });
                }
            }
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.offset));
        let next = if out.len() > page_size {
            out.truncate(page_size);
            out.last().map(|d| d.offset)
        } else {
            None
        };
        Ok((out, next))
    }

    /// Sends the event at `offset` to endpoint `id` through its worker (a
    /// fresh schedule, signed like any delivery), whether or not the
    /// endpoint existed when it was published or its event types select
    /// it. Refused while the event's delivery to it is under way, and when
    /// the endpoint's filter condition excludes it (its worker would skip
    /// it).
    pub async fn resend(&self, scope: &Scope, id: &str, offset: Offset) -> Result<pb::Delivery> {
        let _workers = self.workers.lock().await;
        let record = self.record(scope, id)?;
        let event = scope.event(&self.store, offset)?;
        // An endpoint never receives another tenant's event, not even by hand.
        let tenant = crate::tenant::of_event(&event.event);
        if !record.endpoint().tenant.is_empty() && record.endpoint().tenant != tenant {
            return Err(Error::FailedPrecondition(format!(
                "event {offset} does not belong to the endpoint's tenant {:?}",
                record.endpoint().tenant
            )));
        }
        let spec = EndpointSpec::from_pb(record.endpoint(), &self.config)?;
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
        let is_held = || {
            self.views
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .is_some_and(|v| {
                    v.held
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains_key(&offset)
                })
        };
        // A final record is written (with the ack) just before the worker
        // lets the event go: give it a moment to finish.
        if existing.as_ref().is_some_and(|d| {
            matches!(
                d.state(),
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
        let under_way = existing
            .as_ref()
            .is_some_and(|d| matches!(d.state(), DeliveryState::Pending | DeliveryState::Failed));
        if under_way || held {
            return Err(Error::FailedPrecondition(format!(
                "the delivery of event {offset} to endpoint {id} is under way; \
                 use RetryDelivery to hurry a failed one"
            )));
        }
        if existing
            .as_ref()
            .is_some_and(|d| d.state() == DeliveryState::Dead)
        {
            self.metrics.dead.add(id, -1);
        }
        // A pending record with no attempts in this round: the worker sends
        // it at once (its first delay is in the past) and numbers its
        // attempts after any earlier ones.
        let mut d = existing.unwrap_or_default();
        d.event_id = event.event.id.clone();
        d.event_type = event.event_type.to_string();
        d.state = DeliveryState::Pending as i32;
        d.attempts = 0;
        d.next_attempt_at = None;
        d.superseded_by = 0;
        self.store.deliveries().put(id, offset, &d).await?;
        self.consumers
            .get(&consumer_name(id))?
            .reopen(offset)
            .await?;
        tracing::info!(endpoint = %id, offset, "event re-sent");
        d.endpoint_id = id.to_owned();
        d.offset = offset;
        d.webhook_id = signing::webhook_id(&d.event_id).into_owned();
        Ok(d)
    }

    /// The request endpoint `id` gets for the event at `offset`, signed
    /// now with its current secret(s), at its last attempt's timestamp if it
    /// had one. Custom header values are redacted.
    pub fn render_request(
        &self,
        scope: &Scope,
        id: &str,
        offset: Offset,
    ) -> Result<pb::RenderDeliveryResponse> {
        let record = self.record(scope, id)?;
        let event = scope.event(&self.store, offset)?;
        let spec = EndpointSpec::from_pb(record.endpoint(), &self.config)?;
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
            super::envelope::wrap(
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
        let timestamp = last_attempt.map_or_else(
            || convert::timestamp(SystemTime::now()).seconds,
            |t| t.seconds,
        );
        let msg_id = signing::webhook_id(&event.event.id).into_owned();
        let keys = keys_of(&record);
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
        let mut headers: Vec<pb::RenderedHeader> =
            stack::base_headers(event.event_type.as_str(), &event.event.id, &spec.headers)
                .iter()
                .map(|(name, value)| pb::RenderedHeader {
                    name: name.as_str().to_owned(),
                    value: if custom.contains(name.as_str()) {
                        REDACTED.to_owned()
                    } else {
                        String::from_utf8_lossy(value.as_bytes()).into_owned()
                    },
                })
                .collect();
        for (name, value) in [
            (stack::WEBHOOK_ID, msg_id.clone()),
            (stack::WEBHOOK_TIMESTAMP, timestamp.to_string()),
            (stack::WEBHOOK_SIGNATURE, signature),
        ] {
            headers.push(pb::RenderedHeader {
                name: name.as_str().to_owned(),
                value,
            });
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok(pb::RenderDeliveryResponse {
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

/// Custom header changes by name (UpdateEndpoint's `set_headers` and
/// `remove_headers`), so a client never has to send back values it was
/// only shown redacted. Names compare case-insensitively, as in HTTP.
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    /// Added, or replacing the header of the same name.
    pub set: HashMap<String, String>,
    /// Removed; each must exist.
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits to `headers`; nothing changes on error. The
    /// result is validated with the rest of the endpoint afterwards.
    pub fn apply(&self, headers: &mut HashMap<String, String>) -> Result<()> {
        let mut out = headers.clone();
        for (i, name) in self.remove.iter().enumerate() {
            let field = format!("remove_headers[{i}]");
            if self.set.keys().any(|s| s.eq_ignore_ascii_case(name)) {
                return Err(Error::invalid(
                    field,
                    format!("{name:?} is also in set_headers"),
                ));
            }
            let Some(key) = out.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned() else {
                return Err(Error::invalid(
                    field,
                    format!("the endpoint has no header {name:?}"),
                ));
            };
            out.remove(&key);
        }
        let mut names: Vec<&String> = self.set.keys().collect();
        names.sort();
        for name in names {
            if name.is_empty() {
                return Err(Error::invalid("set_headers", "a header name is empty"));
            }
            out.retain(|k, _| !k.eq_ignore_ascii_case(name));
            out.insert(name.clone(), self.set[name].clone());
        }
        *headers = out;
        Ok(())
    }
}
