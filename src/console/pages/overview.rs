//! Overview: every endpoint with its state, backlog, dead count, and the
//! last hour's success rate, latency and per-minute chart (GetEndpointStats).

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{extract::State, response::Response};

use super::{dur, endpoint_state, status_text};
use crate::{
    console::{
        render,
        session::Sess,
        templates::{Bar, Chart, EndpointRow, Frame, Overview},
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
            .list_endpoints(sess.request(pb::ListEndpointsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
            }))
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
    let mut rows = Vec::with_capacity(endpoints.len());
    for e in &endpoints {
        let (state, reason) = endpoint_state(e, console.auto_disable_after);
        let dead = dead_count(&console, &sess, &e.id).await;
        let stats = console
            .admin()
            .get_endpoint_stats(sess.request(pb::GetEndpointStatsRequest {
                endpoint_id: e.id.clone(),
                window: None,
            }))
            .await
            .map(tonic::Response::into_inner);
        let (success_rate, latency, chart) = match stats {
            Ok(s) if s.attempts == 0 => (
                "no attempts".into(),
                String::new(),
                chart(&s, SystemTime::now()),
            ),
            Ok(s) => (
                format!(
                    "{:.1}% of {} attempt{}",
                    s.success_rate * 100.0,
                    s.attempts,
                    if s.attempts == 1 { "" } else { "s" }
                ),
                format!(
                    "p50 {} · p95 {} · p99 {}",
                    dur(s.latency_p50.as_ref()),
                    dur(s.latency_p95.as_ref()),
                    dur(s.latency_p99.as_ref())
                ),
                chart(&s, SystemTime::now()),
            ),
            Err(st) => (
                status_text(&st),
                String::new(),
                chart(&Default::default(), SystemTime::now()),
            ),
        };
        rows.push(EndpointRow {
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
            dead,
            success_rate,
            latency,
            chart,
        });
    }
    let endpoints = rows;
    render(Overview {
        frame: Frame {
            who: sess.who(),
            csrf: sess.csrf.clone(),
        },
        endpoints,
        error,
    })
}

/// The most dead deliveries counted per endpoint (one page).
const DEAD_PAGE: u32 = 1000;

/// An endpoint's dead deliveries: the count of one page, `1000+` beyond.
async fn dead_count(console: &Console, sess: &Sess, id: &str) -> String {
    let r = console
        .admin()
        .list_deliveries(sess.request(pb::ListDeliveriesRequest {
            endpoint_id: id.to_owned(),
            state: pb::DeliveryState::Dead as i32,
            page_size: DEAD_PAGE,
            ..Default::default()
        }))
        .await;
    match r {
        Ok(r) => {
            let r = r.into_inner();
            if r.next_page_token.is_empty() {
                r.deliveries.len().to_string()
            } else {
                format!("{}+", r.deliveries.len())
            }
        }
        Err(s) => status_text(&s),
    }
}

/// Minutes the chart covers (the stats window, one hour).
const MINUTES: u64 = 60;
const BAR_WIDTH: u32 = 4;
const CHART_HEIGHT: u32 = 40;

/// The last hour per minute as stacked bars: successes below, failures on
/// top, scaled to the busiest minute. `now` decides which minute is last.
pub fn chart(s: &pb::GetEndpointStatsResponse, now: SystemTime) -> Chart {
    let now_min = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
        / 60;
    // (minutes ago, bucket) of the buckets within the hour.
    let recent: Vec<(u64, &pb::StatsBucket)> = s
        .buckets
        .iter()
        .filter_map(|b| {
            let min = u64::try_from(b.start.as_ref()?.seconds).ok()? / 60;
            let age = now_min.checked_sub(min)?;
            (age < MINUTES).then_some((age, b))
        })
        .collect();
    let max = recent
        .iter()
        .map(|(_, b)| b.successes + b.failures)
        .max()
        .unwrap_or(0)
        .max(1);
    // Bars at least 1 unit tall when there is something to show.
    let scale = |n: u64| -> u32 {
        if n == 0 {
            0
        } else {
            ((n * u64::from(CHART_HEIGHT)).div_ceil(max) as u32).clamp(1, CHART_HEIGHT)
        }
    };
    // The p95 latency per minute as a line over the bars, scaled to the
    // hour's slowest minute.
    let nanos = |b: &pb::StatsBucket| {
        b.latency_p95.as_ref().map_or(0, |d| {
            d.seconds.max(0) as u64 * 1_000_000_000 + d.nanos.max(0) as u64
        })
    };
    let slowest = recent.iter().map(|(_, b)| nanos(b)).max().unwrap_or(0);
    let mut points: Vec<(u64, String)> = recent
        .iter()
        .filter(|_| slowest > 0)
        .map(|(age, b)| {
            let x = (MINUTES - 1 - age) as u32 * BAR_WIDTH + 1;
            let y = u64::from(CHART_HEIGHT) - nanos(b) * u64::from(CHART_HEIGHT) / slowest;
            (*age, format!("{x},{y}"))
        })
        .collect();
    points.sort_by_key(|(age, _)| std::cmp::Reverse(*age));
    let latency_points = points
        .into_iter()
        .map(|(_, p)| p)
        .collect::<Vec<_>>()
        .join(" ");
    let bars = recent
        .into_iter()
        .map(|(age, b)| {
            let ok_h = scale(b.successes);
            let fail_h = scale(b.failures).min(CHART_HEIGHT - ok_h);
            Bar {
                x: (MINUTES - 1 - age) as u32 * BAR_WIDTH,
                ok_y: CHART_HEIGHT - ok_h,
                ok_h,
                fail_y: CHART_HEIGHT - ok_h - fail_h,
                fail_h,
                tip: format!(
                    "{age}m ago: {} ok, {} failed, p95 {}",
                    b.successes,
                    b.failures,
                    dur(b.latency_p95.as_ref())
                ),
            }
        })
        .collect();
    Chart {
        width: MINUTES as u32 * BAR_WIDTH,
        height: CHART_HEIGHT,
        bars,
        latency_points,
        title: format!(
            "attempts per minute over the last hour: {} ok, {} failed; the line: p95 latency per minute",
            s.successes, s.failures
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(secs: i64, ok: u64, failed: u64) -> pb::StatsBucket {
        pb::StatsBucket {
            start: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            attempts: ok + failed,
            successes: ok,
            failures: failed,
            latency_p95: None,
        }
    }

    #[test]
    fn bars_by_minute_scaled_to_the_busiest() {
        let now = UNIX_EPOCH + Duration::from_secs(600 * 60 + 30);
        let s = pb::GetEndpointStatsResponse {
            successes: 5,
            failures: 2,
            buckets: vec![
                // 61 minutes ago: outside the hour.
                bucket((600 - 61) * 60, 9, 9),
                bucket((600 - 2) * 60, 2, 2),
                bucket(600 * 60, 3, 0),
            ],
            ..Default::default()
        };
        let c = chart(&s, now);
        assert_eq!((c.width, c.height), (240, 40));
        assert_eq!(c.bars.len(), 2);
        let (a, b) = (&c.bars[0], &c.bars[1]);
        // Two minutes ago: 2 ok + 2 failed of a busiest 4.
        assert_eq!((a.x, a.ok_h, a.fail_h), (57 * 4, 20, 20));
        assert_eq!((a.ok_y, a.fail_y), (20, 0));
        // This minute: 3 ok.
        assert_eq!((b.x, b.ok_h, b.fail_h, b.ok_y), (59 * 4, 30, 0, 10));
        assert!(c.title.contains("5 ok, 2 failed"), "{}", c.title);
    }

    #[test]
    fn no_buckets_no_bars() {
        let c = chart(&Default::default(), SystemTime::now());
        assert!(c.bars.is_empty());
        assert!(c.latency_points.is_empty());
    }

    #[test]
    fn the_latency_line_runs_oldest_first_scaled_to_the_slowest_minute() {
        let now = UNIX_EPOCH + Duration::from_secs(600 * 60 + 30);
        let with_p95 = |secs, ms: u64| pb::StatsBucket {
            latency_p95: Some(prost_types::Duration {
                seconds: (ms / 1000) as i64,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
            ..bucket(secs, 1, 0)
        };
        let s = pb::GetEndpointStatsResponse {
            // Newest first, to show the order is by time, not by input.
            buckets: vec![with_p95(600 * 60, 50), with_p95((600 - 2) * 60, 100)],
            ..Default::default()
        };
        let c = chart(&s, now);
        let h = CHART_HEIGHT;
        let x_old = (MINUTES - 1 - 2) as u32 * BAR_WIDTH + 1;
        let x_new = (MINUTES - 1) as u32 * BAR_WIDTH + 1;
        assert_eq!(c.latency_points, format!("{x_old},0 {x_new},{}", h - h / 2));
    }
}
