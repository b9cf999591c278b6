//! Every request the receivers got: the signature of its endpoint, the
//! event it names, the same body on every copy, and why each copy after
//! the first was sent.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{
    answers::Mixer,
    check_delivered::Stop,
    endpoints::Ep,
    events::{check_content, event_type, lane, parse_id},
    IN_FLIGHT_AT_MOST,
};
use crate::support::verify_signature;

/// Checks every request the receivers got and classifies every copy after
/// the first. Returns the report, or the broken guarantees.
pub(super) fn check_requests(
    eps: &[Ep],
    mixers: [&Mixer; 2],
    acked: &HashMap<String, u64>,
    sent: &HashSet<String>,
    stops: &[Stop],
    started: Instant,
) -> Result<String, String> {
    let mut errors = Vec::new();
    let mut report = String::new();
    for m in mixers {
        let requests = m.rx.requests();
        let answers = m.answers();
        let mut bodies: HashMap<(&str, &str), &Bytes> = HashMap::new();
        // Per endpoint and id: its requests, in order of arrival.
        let mut copies: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            let Some(ep) = eps
                .iter()
                .find(|ep| ep.spec.flaky == m.flaky && r.path == ep.spec.path())
            else {
                errors.push(format!("request to an unknown path: {r:?}"));
                continue;
            };
            let name = ep.spec.name;
            let Some(id) = r.header("webhook-id") else {
                errors.push(format!(
                    "endpoint {name}: request without webhook-id: {r:?}"
                ));
                continue;
            };
            if let Err(e) = verify_signature(&ep.secret, r) {
                errors.push(format!("endpoint {name}: {id:?} does not verify: {e}"));
            }
            let Some((_, seq)) = parse_id(id).filter(|_| sent.contains(id)) else {
                errors.push(format!(
                    "endpoint {name}: {id:?} was never published: {r:?}"
                ));
                continue;
            };
            if !ep.spec.matches(seq) {
                errors.push(format!(
                    "endpoint {name}: got {id:?} ({}, lane {}), which its filters exclude",
                    event_type(seq),
                    lane(seq)
                ));
            }
            if let Err(e) = check_content(id, seq, r) {
                errors.push(format!("endpoint {name}: {e}"));
            }
            match bodies.entry((name, id)) {
                Entry::Vacant(e) => {
                    e.insert(&r.body);
                }
                Entry::Occupied(e) if **e.get() != r.body => errors.push(format!(
                    "endpoint {name}: copies of {id:?} differ:\n  first: {}\n  now:   {}",
                    String::from_utf8_lossy(e.get()),
                    r.body_text()
                )),
                Entry::Occupied(_) => {}
            }
            copies.entry((name, id)).or_default().push(i);
        }
        for ep in eps.iter().filter(|e| e.spec.flaky == m.flaky) {
            let name = ep.spec.name;
            let (mut n_requests, mut ids, mut unacked) = (0, 0, 0);
            let (mut after_failure, mut across_stop, mut unknown) = (0, 0, 0);
            let mut ages: Vec<Duration> = Vec::new();
            for ((_, id), idx) in copies.iter().filter(|((n, _), _)| *n == name) {
                ids += 1;
                n_requests += idx.len();
                if !acked.contains_key(*id) {
                    unacked += 1;
                }
                for w in idx.windows(2) {
                    let (first, second) = (&requests[w[0]], &requests[w[1]]);
                    match answers.get(w[0]).copied().flatten() {
                        None => unknown += 1,
                        Some(a) if !a.success() => after_failure += 1,
                        Some(a) => match stops.iter().find(|s| s.between(first, second)) {
                            Some(stop) => {
                                across_stop += 1;
                                // How long before the stop the 2xx copy
                                // arrived: a delivery is in flight until
                                // its outcome is committed (milliseconds).
                                let age = stop.at.saturating_duration_since(first.received_at);
                                ages.push(age);
                                if age > IN_FLIGHT_AT_MOST {
                                    errors.push(format!(
                                        "DUPLICATE DELIVERY: endpoint {name} got {id:?} again at \
                                         +{:?} although it had answered {a:?} (a 2xx) to the copy \
                                         at +{:?}, {age:?} before the broker stop at +{:?}: not in \
                                         flight at the stop, so its outcome was not recorded",
                                        second.received_at - started,
                                        first.received_at - started,
                                        stop.at - started,
                                    ));
                                }
                            }
                            None => errors.push(format!(
                                "DUPLICATE DELIVERY: endpoint {name} got {id:?} again at +{:?} \
                                 after answering {a:?} (a 2xx) to the copy at +{:?}, with no \
                                 broker stop in between (stops at {:?})",
                                second.received_at - started,
                                first.received_at - started,
                                stops
                                    .iter()
                                    .map(|s| (s.at - started, s.next_ready - started))
                                    .collect::<Vec<_>>()
                            )),
                        },
                    }
                }
            }
            report.push_str(&format!(
                "  endpoint {name:5}: {n_requests} requests for {ids} events ({} acknowledged + \
                 {unacked} written but unacknowledged); {} copies after the first: \
                 {after_failure} retries after a 500 or reset, {across_stop} re-sent across a \
                 broker stop (2xx answered before the stop by: median {:?}, max {:?}){}\n",
                ids - unacked,
                n_requests - ids,
                {
                    ages.sort();
                    ages.get(ages.len() / 2).copied().unwrap_or_default()
                },
                ages.last().copied().unwrap_or_default(),
                if unknown > 0 {
                    format!(", {unknown} unclassified (the receiver's answer queue ran dry)")
                } else {
                    String::new()
                }
            ));
        }
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        let n = errors.len();
        errors.truncate(20);
        Err(format!(
            "{n} bad webhook requests (first {}):\n{}",
            errors.len(),
            errors.join("\n")
        ))
    }
}
