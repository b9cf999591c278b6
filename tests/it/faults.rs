//! The receiver fault matrix: for each way a webhook receiver can misbehave
//! (slow just under and just over the timeout, connection resets,
//! half-written responses, 5xx bursts, 429 storms with and without
//! `Retry-After`, redirects, 4xx, 410 Gone), one event to one endpoint must
//! end delivered or dead-lettered as the endpoint's retry schedule says,
//! after exactly the attempts the schedule allows, each recorded by
//! `ListAttempts` with its status or error. Redirects are never followed
//! and never count as delivered; 410 disables the endpoint and keeps the
//! delivery until the endpoint is enabled again. That nothing more is sent
//! is shown by a marker event behind the case's event, not by waiting.
//!
//! Every case has its own receiver and endpoint (an attribute filter routes
//! the case's event to it alone); all run at once against one broker, which
//! also shows that one misbehaving receiver does not hold up another.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stevedore::pb::{
    self, admin_client::AdminClient, CreateEndpointRequest, DeliveryState, Endpoint,
    GetEndpointRequest, ListAttemptsRequest, ListDeliveriesRequest, UpdateEndpointRequest,
};
use tonic::transport::Channel;

use crate::support::{
    ms, pick, publish, Behavior, Receiver, TestServer, HALF_WRITTEN_MISSING, HOOK_PATH,
};

/// The retry schedule's jitter (the broker's default).
const JITTER: f64 = 0.20;
/// Scheduling slack allowed on the lower bound of a gap between attempts.
const SLACK: Duration = Duration::from_millis(20);
/// A case reaching its final state, or its marker arriving.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// What one attempt must have recorded.
#[derive(Clone, Debug)]
enum Want {
    /// A response with this status (its `error`: empty for 2xx, else
    /// `HTTP <status> ...`).
    Status(u16),
    /// No response; `error` contains this text.
    Error(&'static str),
}

/// One row of the matrix.
struct Case {
    name: &'static str,
    /// The endpoint's per-attempt timeout.
    timeout_ms: u64,
    /// The endpoint's retry schedule: its length is the number of attempts.
    schedule_ms: &'static [u64],
    /// Answers for the first requests, in order ...
    answers: Vec<Behavior>,
    /// ... and for every request after them.
    then: Behavior,
    /// The final state: DELIVERED or DEAD.
    state: DeliveryState,
    /// Every attempt, in order (so also how many).
    attempts: Vec<Want>,
    /// The least time between the arrival of attempt `i` and `i + 1`,
    /// beyond what the schedule implies (a timeout, a `Retry-After`).
    min_gaps_ms: Vec<u64>,
    /// The first attempt's recorded response body.
    first_body: Option<&'static str>,
    /// The first answer is 410 Gone: the endpoint must be disabled with
    /// the delivery kept (not final); the case then enables it again, and
    /// the delivery must go out only after that.
    gone: bool,
}

fn retry_after(status: u16, value: String) -> Behavior {
    Behavior::WithHeaders(status, vec![("retry-after", value)])
}

fn cases() -> Vec<Case> {
    use DeliveryState::{Dead, Delivered};
    use Want::{Error, Status};
    let ok = || Behavior::Status(200);
    let delay = |ms, s| Behavior::Delay(Duration::from_millis(ms), s);
    // An HTTP-date 3.5 s ahead, which whole seconds make at least 2.5 s:
    // after the case's setup the receiver still asks for over 1.5 s.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_millis(3_500));
    vec![
        Case {
            // A third of the timeout to spare: the suite may load the machine.
            name: "slow, just under the timeout",
            timeout_ms: 1_500,
            schedule_ms: &[0, 100, 100],
            answers: vec![delay(1_000, 200)],
            then: ok(),
            state: Delivered,
            attempts: vec![Status(200)],
            min_gaps_ms: vec![],
            first_body: None,
            gone: false,
        },
        Case {
            name: "slow, just over the timeout, then on time",
            timeout_ms: 400,
            schedule_ms: &[0, 100, 100],
            answers: vec![delay(700, 200)],
            then: ok(),
            state: Delivered,
            attempts: vec![Error("timed out"), Status(200)],
            min_gaps_ms: vec![400],
            first_body: None,
            gone: false,
        },
        Case {
            name: "slow, over the timeout every time",
            timeout_ms: 300,
            schedule_ms: &[0, 100, 100],
            answers: vec![],
            then: delay(700, 200),
            state: Dead,
            attempts: vec![Error("timed out"); 3],
            min_gaps_ms: vec![300, 300],
            first_body: None,
            gone: false,
        },
        Case {
            name: "connection reset, then 200",
            timeout_ms: 2_000,
            schedule_ms: &[0, 100, 100],
            answers: vec![Behavior::Reset],
            then: ok(),
            state: Delivered,
            attempts: vec![Error("transport"), Status(200)],
            min_gaps_ms: vec![],
            first_body: None,
            gone: false,
        },
        Case {
            name: "connection reset every time",
            timeout_ms: 2_000,
            schedule_ms: &[0, 100, 100],
            answers: vec![],
            then: Behavior::Reset,
            state: Dead,
            attempts: vec![Error("transport"); 3],
            min_gaps_ms: vec![],
            first_body: None,
            gone: false,
        },
        Case {
            // The status line arrived: a 2xx is a 2xx even if the body breaks.
            name: "half-written 200",
            timeout_ms: 2_000,
            schedule_ms: &[0, 100, 100],
            answers: vec![Behavior::HalfWritten(200, "{\"received\": tr".into())],
            then: ok(),
            state: Delivered,
            attempts: vec![Status(200)],
            min_gaps_ms: vec![],
            first_body: Some("{\"received\": tr"),
            gone: false,
        },
        Case {
            name: "half-written 500, then 200",
            timeout_ms: 2_000,
            schedule_ms: &[0, 100, 100],
            answers: vec![Behavior::HalfWritten(500, "database unavail".into())],
            then: ok(),
            state: Delivered,
            attempts: vec![Status(500), Status(200)],
            min_gaps_ms: vec![],
            first_body: Some("database unavail"),
            gone: false,
        },
        Case {
            name: "5xx burst, then 200",
            timeout_ms: 2_000,
            schedule_ms: &[0, 50, 50, 50, 50, 50],
            answers: [500, 502, 503, 504]
                .into_iter()
                .map(Behavior::Status)
                .collect(),
            then: ok(),
            state: Delivered,
            attempts: vec![
                Status(500),
                Status(502),
                Status(503),
                Status(504),
                Status(200),
            ],
            min_gaps_ms: vec![],
            first_body: None,
            gone: false,
        },
        Case {
            name: "5xx burst longer than the schedule",
            timeout_ms: 2_000,
            schedule_ms: &[0, 50, 50],
            answers: vec![Behavior::Status(500), Behavior::Status(502)],
            then: Behavior::Status(503),
            state: Dead,
            attempts: vec![Status(500), Status(502), Status(503)],
            min_gaps_ms: vec![],
            first_body: None,
            gone: false,
        },
        Case {
            name: "429 storm with Retry-After: 1, then 200",
            timeout_ms: 2_000,
            schedule_ms: &[0, 10, 10, 10],
            answers: vec![retry_after(429, "1".into()), retry_after(429, "1".into())],
            then: ok(),
            state: Delivered,
            attempts: vec![Status(429), Status(429), Status(200)],
            min_gaps_ms: vec![1_000, 1_000],
            first_body: None,
            gone: false,
        },
        Case {
            name: "429 storm with Retry-After: 1 outlasting the schedule",
            timeout_ms: 2_000,
            schedule_ms: &[0, 10, 10],
            answers: vec![],
            then: retry_after(429, "1".into()),
            state: Dead,
            attempts: vec![Status(429); 3],
            min_gaps_ms: vec![1_000, 1_000],
            first_body: None,
            gone: false,
        },
        Case {
            name: "429 storm without Retry-After",
            timeout_ms: 2_000,
            schedule_ms: &[0, 100, 200, 300],
            answers: vec![],
            then: Behavior::Status(429),
            state: Dead,
            attempts: vec![Status(429); 4],
            min_gaps_ms: vec![],
            first_body: None,
            gone: false,
        },
        Case {
            name: "503 with an HTTP-date Retry-After, then 200",
            timeout_ms: 2_000,
            schedule_ms: &[0, 10, 10],
            answers: vec![retry_after(503, date)],
            then: ok(),
            state: Delivered,
            attempts: vec![Status(503), Status(200)],
            min_gaps_ms: vec![1_500],
            first_body: None,
            gone: false,
        },
        Case {
            // Never followed: a follower would ask the receiver for /moved.
            name: "3xx redirects, not followed, then 200",
            timeout_ms: 2_000,
            schedule_ms: &[0, 50, 50, 50, 50],
            answers: [301, 302, 307, 308]
                .into_iter()
                .map(|s| Behavior::WithHeaders(s, vec![("location", "/moved".into())]))
                .collect(),
            then: ok(),
            state: Delivered,
            attempts: vec![
                Status(301),
                Status(302),
                Status(307),
                Status(308),
                Status(200),
            ],
            min_gaps_ms: vec![],
            first_body: None,
            gone: false,
        },
        Case {
            name: "302 every time",
            timeout_ms: 2_000,
            schedule_ms: &[0, 50, 50],
            answers: vec![],
            then: Behavior::WithHeaders(302, vec![("location", "/moved".into())]),
            state: Dead,
            attempts: vec![Status(302); 3],
            min_gaps_ms: vec![],
            first_body: None,
            gone: false,
        },
        Case {
            name: "4xx, then 200",
            timeout_ms: 2_000,
            schedule_ms: &[0, 50, 50, 50, 50, 50, 50],
            answers: [400, 401, 403, 404, 409, 422]
                .into_iter()
                .map(Behavior::Status)
                .collect(),
            then: ok(),
            state: Delivered,
            attempts: vec![
                Status(400),
                Status(401),
                Status(403),
                Status(404),
                Status(409),
                Status(422),
                Status(200),
            ],
            min_gaps_ms: vec![],
            first_body: None,
            gone: false,
        },
        Case {
            name: "404 every time",
            timeout_ms: 2_000,
            schedule_ms: &[0, 50, 50],
            answers: vec![],
            then: Behavior::Status(404),
            state: Dead,
            attempts: vec![Status(404); 3],
            min_gaps_ms: vec![],
            first_body: None,
            gone: false,
        },
        Case {
            // A schedule this short would send (and dead-letter) the
            // event again before the endpoint is seen disabled, if 410
            // were retried like other failures.
            name: "410 Gone disables the endpoint; enabled again, 200",
            timeout_ms: 2_000,
            schedule_ms: &[0, 10, 10],
            answers: vec![Behavior::Status(410)],
            then: ok(),
            state: Delivered,
            attempts: vec![Status(410), Status(200)],
            min_gaps_ms: vec![],
            first_body: None,
            gone: true,
        },
    ]
}

/// What a case ended with, for the table.
struct Outcome {
    state: DeliveryState,
    attempts: Vec<pb::Attempt>,
    gaps: Vec<Duration>,
    took: Duration,
}

async fn run_case(
    server: &TestServer,
    mut admin: AdminClient<Channel>,
    index: usize,
    case: &Case,
) -> Result<Outcome, String> {
    let rx = Receiver::start().await;
    for b in &case.answers {
        rx.respond(b.clone());
    }
    rx.set_default(case.then.clone());
    let tag = format!("case-{index}");
    let endpoint = Endpoint {
        url: rx.url.clone(),
        description: case.name.into(),
        attribute_filters: [("case".to_owned(), tag.clone())].into(),
        timeout: Some(ms(case.timeout_ms)),
        retry_schedule: case.schedule_ms.iter().map(|&n| ms(n)).collect(),
        ..Default::default()
    };
    let ep = admin
        .create_endpoint(CreateEndpointRequest {
            endpoint: Some(endpoint),
        })
        .await
        .map_err(|s| format!("CreateEndpoint: {s:?}"))?
        .into_inner()
        .endpoint
        .ok_or("CreateEndpoint returned no endpoint")?;
    let mut event = pick(&format!("fault-{index}"), &format!("SO-{index}"));
    event.attributes.insert("case".into(), tag.clone());
    let started = Instant::now();
    let offset = publish(&mut server.publisher().await, event).await;

    // The final state (for a 410 case: first the endpoint disabled, then
    // enabled again by the case).
    let mut enabled_again = None;
    let delivery = loop {
        let d = admin
            .list_deliveries(ListDeliveriesRequest {
                endpoint_id: ep.id.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("ListDeliveries: {s:?}"))?
            .into_inner()
            .deliveries;
        let done = d.iter().find(|d| {
            d.offset == offset
                && matches!(d.state(), DeliveryState::Delivered | DeliveryState::Dead)
        });
        if case.gone && enabled_again.is_none() {
            if let Some(d) = done {
                return Err(format!(
                    "ended {:?} instead of disabling the endpoint: {d:?}",
                    d.state()
                ));
            }
            let e = admin
                .get_endpoint(GetEndpointRequest { id: ep.id.clone() })
                .await
                .map_err(|s| format!("GetEndpoint: {s:?}"))?
                .into_inner()
                .endpoint
                .ok_or("GetEndpoint returned no endpoint")?;
            if e.enabled == Some(false) {
                if e.disabled_reason != "410 Gone" {
                    return Err(format!("disabled for another reason: {e:?}"));
                }
                enabled_again = Some(Instant::now());
                admin
                    .update_endpoint(UpdateEndpointRequest {
                        endpoint: Some(Endpoint {
                            id: ep.id.clone(),
                            enabled: Some(true),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["enabled".into()],
                        }),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| format!("UpdateEndpoint: {s:?}"))?;
            }
        } else if let Some(d) = done {
            break d.clone();
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            return Err(format!(
                "no final state after {SETTLE_TIMEOUT:?}: deliveries {d:?}; requests {:?}",
                rx.requests()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    // Nothing more arrives once it is final: a marker event with the same
    // ordering key goes out only after the case's event is final, so an
    // extra attempt would arrive before it.
    rx.set_default(Behavior::Status(200));
    let mut marker = pick(&format!("marker-{index}"), &format!("SO-{index}"));
    marker.attributes.insert("case".into(), tag);
    publish(&mut server.publisher().await, marker).await;
    let requests = rx
        .before_marker(&format!("marker-{index}"), SETTLE_TIMEOUT)
        .await;
    let attempts = admin
        .list_attempts(ListAttemptsRequest {
            endpoint_id: ep.id.clone(),
            offset,
        })
        .await
        .map_err(|s| format!("ListAttempts: {s:?}"))?
        .into_inner()
        .attempts;

    let mut errors = Vec::new();
    let n = case.attempts.len();
    if delivery.state() != case.state {
        errors.push(format!(
            "ended {:?}, expected {:?}: {delivery:?}",
            delivery.state(),
            case.state
        ));
    }
    if delivery.attempts as usize != n {
        errors.push(format!(
            "the delivery record counts {} attempts, expected {n}",
            delivery.attempts
        ));
    }
    if requests.len() != n {
        errors.push(format!(
            "the receiver got {} requests, expected {n} (one per attempt): {requests:?}",
            requests.len()
        ));
    }
    if let Some(r) = requests
        .iter()
        .find(|r| r.header("webhook-id") != Some(&format!("fault-{index}")))
    {
        errors.push(format!("a request for another event: {r:?}"));
    }
    if let Some(r) = requests.iter().find(|r| r.path != HOOK_PATH) {
        errors.push(format!("a redirect was followed: {r:?}"));
    }
    if let (Some(enabled), Some(second)) = (enabled_again, requests.get(1)) {
        if second.received_at < enabled {
            errors.push(format!(
                "attempt 2 arrived while the endpoint was disabled: {second:?}"
            ));
        }
    }
    if attempts.len() != n {
        errors.push(format!(
            "ListAttempts has {} attempts, expected {n}: {attempts:?}",
            attempts.len()
        ));
    }
    for (i, (a, want)) in attempts.iter().zip(&case.attempts).enumerate() {
        let ok = match want {
            Want::Status(s) => {
                a.status == u32::from(*s)
                    && if (200..300).contains(s) {
                        a.error.is_empty()
                    } else {
                        a.error.contains(&s.to_string())
                    }
            }
            Want::Error(text) => a.status == 0 && a.error.contains(text),
        };
        if !ok || a.attempt as usize != i + 1 || a.started_at.is_none() || a.latency.is_none() {
            errors.push(format!("attempt {} is {a:?}, expected {want:?}", i + 1));
        }
        if let Want::Error("timed out") = want {
            let latency = a.latency.map_or(Duration::ZERO, |l| {
                Duration::new(l.seconds as u64, l.nanos as u32)
            });
            if latency < Duration::from_millis(case.timeout_ms) {
                errors.push(format!(
                    "attempt {} timed out after {latency:?}, before the {} ms timeout",
                    i + 1,
                    case.timeout_ms
                ));
            }
        }
    }
    if let Some(want) = case.first_body {
        match attempts.first() {
            Some(a) if a.response_body == want => {}
            other => errors.push(format!(
                "the first attempt's response_body should be the {} bytes the receiver wrote \
                 (of {} declared): {other:?}",
                want.len(),
                want.len() + HALF_WRITTEN_MISSING
            )),
        }
    }
    if let Some(last) = attempts.last() {
        if delivery.last_status != last.status {
            errors.push(format!(
                "the record's last_status {} differs from the last attempt's {}",
                delivery.last_status, last.status
            ));
        }
    }
    // The gaps between attempts: at least the schedule's delay (less its
    // jitter) plus whatever the case adds (a timeout, a Retry-After).
    // Measured between the attempts' starts as the broker recorded them
    // (one request per attempt is checked above): the receiver's arrival
    // times add the connect and the receiver's own scheduling, which on a
    // loaded machine made one gap look 36 ms short of a timeout case's.
    let started: Vec<SystemTime> = attempts
        .iter()
        .map(|a| {
            a.started_at
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or(UNIX_EPOCH)
        })
        .collect();
    let gaps: Vec<Duration> = started
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .collect();
    for (i, gap) in gaps.iter().enumerate() {
        let scheduled = Duration::from_millis(case.schedule_ms.get(i + 1).copied().unwrap_or(0));
        let extra = Duration::from_millis(case.min_gaps_ms.get(i).copied().unwrap_or(0));
        // A Retry-After replaces the schedule's delay; a timeout adds to it.
        let least = if matches!(case.attempts[i], Want::Status(429 | 503)) && extra > scheduled {
            extra
        } else {
            scheduled.mul_f64(1.0 - JITTER) + extra
        }
        .saturating_sub(SLACK);
        if *gap < least {
            errors.push(format!(
                "attempt {} came {gap:?} after attempt {}, sooner than {least:?}",
                i + 2,
                i + 1
            ));
        }
    }
    if errors.is_empty() {
        Ok(Outcome {
            state: delivery.state(),
            attempts,
            gaps,
            took,
        })
    } else {
        Err(errors.join("\n    "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_fault_matrix() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let cases = cases();
    let started = Instant::now();
    let results = futures::future::join_all(
        cases
            .iter()
            .enumerate()
            .map(|(i, case)| run_case(&server, admin.clone(), i, case)),
    )
    .await;
    let mut failures = Vec::new();
    let mut table = String::new();
    for (case, result) in cases.iter().zip(&results) {
        match result {
            Ok(o) => {
                let attempts: Vec<String> = o
                    .attempts
                    .iter()
                    .map(|a| {
                        if a.status != 0 {
                            a.status.to_string()
                        } else {
                            format!("{:?}", a.error.chars().take(90).collect::<String>())
                        }
                    })
                    .collect();
                table.push_str(&format!(
                    "  {:<55} {:<9} after {:>4} ms: attempts [{}], gaps {:?}\n",
                    case.name,
                    format!("{:?}", o.state).to_uppercase(),
                    o.took.as_millis(),
                    attempts.join(", "),
                    o.gaps
                        .iter()
                        .map(|g| format!("{}ms", g.as_millis()))
                        .collect::<Vec<_>>()
                ));
            }
            Err(e) => failures.push(format!("  {}:\n    {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fault cases failed:\n{}\npassed:\n{table}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    println!(
        "receiver fault matrix: {} cases in {:.1}s\n{table}",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
}
