//! Delivery records and attempts as the API shows them: the domain's
//! [`DeliveryRecord`] and [`AttemptRecord`] to `pb::Delivery` and
//! `pb::Attempt`, with the fields that are derived when read (the
//! `webhook-id`), and delivery states both ways; why an endpoint got an
//! event or not (ExplainEvent), and the request a delivery sends
//! (RenderDelivery).

use crate::{
    model::{
        delivery::{webhook_id, AttemptRecord, DeliveryRecord, DeliveryState},
        endpoint::{Explanation, RenderedRequest},
    },
    pb,
};

/// `record` as the API shows it, with its `webhook_id` (derived from the
/// event id, never stored).
pub fn delivery_to_pb(record: &DeliveryRecord) -> pb::Delivery {
    pb::Delivery {
        endpoint_id: record.endpoint_id.as_str().to_owned(),
        offset: record.offset.get(),
        event_id: record.event_id.as_str().to_owned(),
        event_type: record.event_type.clone(),
        state: state_to_pb(record.state) as i32,
        attempts: record.attempts,
        next_attempt_at: record.next_attempt_at.map(super::timestamp),
        last_attempt_at: record.last_attempt_at.map(super::timestamp),
        last_status: record.last_status,
        last_error: record.last_error.clone(),
        superseded_by: record.superseded_by.get(),
        webhook_id: webhook_id(record.event_id.as_str()).into_owned(),
    }
}

/// An [`Explanation`] as ExplainEvent answers it.
pub fn explanation_to_pb(e: &Explanation) -> pb::ExplainEventResponse {
    pb::ExplainEventResponse {
        offset: e.offset.get(),
        event_type: e.event_type.clone(),
        matches: e.matches,
        reason: e.reason.clone(),
        delivery: e.delivery.as_ref().map(delivery_to_pb),
    }
}

/// RenderDelivery's answer as a [`RenderedRequest`] (what the console shows).
pub fn rendered_request_from_pb(r: pb::RenderDeliveryResponse) -> RenderedRequest {
    RenderedRequest {
        method: r.method,
        url: r.url,
        headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        signed_content: r.signed_content,
        body: r.body,
        timestamp_from_last_attempt: r.timestamp_from_last_attempt,
        matches: r.matches,
    }
}

/// A [`RenderedRequest`] as RenderDelivery answers it.
pub fn rendered_request_to_pb(r: &RenderedRequest) -> pb::RenderDeliveryResponse {
    pb::RenderDeliveryResponse {
        method: r.method.clone(),
        url: r.url.clone(),
        headers: r
            .headers
            .iter()
            .map(|(name, value)| pb::RenderedHeader {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        signed_content: r.signed_content.clone(),
        body: r.body.clone(),
        timestamp_from_last_attempt: r.timestamp_from_last_attempt,
        matches: r.matches,
    }
}

/// `attempt` as the API shows it.
pub fn attempt_to_pb(attempt: &AttemptRecord) -> pb::Attempt {
    pb::Attempt {
        attempt: attempt.attempt,
        started_at: attempt.started_at.map(super::timestamp),
        latency: attempt.latency.map(|d| prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        }),
        status: attempt.status,
        error: attempt.error.clone(),
        response_body: attempt.response_body.clone(),
    }
}

/// The API's name for `state`.
pub fn state_to_pb(state: DeliveryState) -> pb::DeliveryState {
    match state {
        DeliveryState::Unspecified => pb::DeliveryState::Unspecified,
        DeliveryState::Pending => pb::DeliveryState::Pending,
        DeliveryState::Delivered => pb::DeliveryState::Delivered,
        DeliveryState::Failed => pb::DeliveryState::Failed,
        DeliveryState::Dead => pb::DeliveryState::Dead,
        DeliveryState::Superseded => pb::DeliveryState::Superseded,
    }
}

/// The domain's state for the API's `state`.
pub fn state_from_pb(state: pb::DeliveryState) -> DeliveryState {
    match state {
        pb::DeliveryState::Unspecified => DeliveryState::Unspecified,
        pb::DeliveryState::Pending => DeliveryState::Pending,
        pb::DeliveryState::Delivered => DeliveryState::Delivered,
        pb::DeliveryState::Failed => DeliveryState::Failed,
        pb::DeliveryState::Dead => DeliveryState::Dead,
        pb::DeliveryState::Superseded => DeliveryState::Superseded,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::model::{EndpointId, EventId, Offset};

    #[test]
    fn states_map_one_to_one_and_names_agree() {
        for s in [
            DeliveryState::Unspecified,
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
            DeliveryState::Dead,
            DeliveryState::Superseded,
        ] {
            assert_eq!(state_from_pb(state_to_pb(s)), s);
            assert_eq!(state_to_pb(s).as_str_name(), s.name());
        }
    }

    #[test]
    fn a_record_shows_with_its_webhook_id() {
        let record = DeliveryRecord {
            endpoint_id: EndpointId::new("ep1"),
            offset: Offset::new(9),
            event_id: EventId::new("café-5"),
            state: DeliveryState::Failed,
            next_attempt_at: Some(UNIX_EPOCH + Duration::new(1_770_000_000, 5)),
            ..Default::default()
        };
        let d = delivery_to_pb(&record);
        assert_eq!(d.webhook_id, webhook_id("café-5"));
        assert!(d.webhook_id.starts_with("msg_"));
        assert_eq!((d.endpoint_id.as_str(), d.offset), ("ep1", 9));
        assert_eq!(d.state(), pb::DeliveryState::Failed);
        assert_eq!(
            d.next_attempt_at,
            Some(prost_types::Timestamp {
                seconds: 1_770_000_000,
                nanos: 5
            })
        );
        assert_eq!(d.last_attempt_at, None);
    }
}
