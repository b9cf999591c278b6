//! The pages' askama templates (`templates/console/`) and their data.

use askama::Template;

/// What every logged-in page shows in its frame.
pub struct Frame {
    pub who: String,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "console/login.html")]
pub struct Login {
    pub error: String,
    pub auth_off: bool,
}

pub struct EndpointRow {
    pub id: String,
    pub url: String,
    pub description: String,
    pub state: &'static str,
    pub reason: String,
    pub backlog: u64,
    pub event_types: String,
    /// Dead deliveries: a count, `1000+` beyond one page.
    pub dead: String,
    /// The last hour's success rate, e.g. `50.0%` (`no attempts` without).
    pub success_rate: String,
    /// The last hour's latency percentiles, e.g. `p50 16ms · p95 32ms`.
    pub latency: String,
    /// The last hour per minute, drawn as bars.
    pub chart: Chart,
}

/// A server-drawn per-minute bar chart of attempts (with failures on top).
pub struct Chart {
    pub width: u32,
    pub height: u32,
    pub bars: Vec<Bar>,
    /// The p95 latency line's points (`x,y x,y ...`; empty: none).
    pub latency_points: String,
    /// What the chart shows, in words (its `<title>`).
    pub title: String,
}

/// One minute's bars (SVG coordinates).
pub struct Bar {
    pub x: u32,
    pub ok_y: u32,
    pub ok_h: u32,
    pub fail_y: u32,
    pub fail_h: u32,
    pub tip: String,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
pub struct Overview {
    pub frame: Frame,
    pub endpoints: Vec<EndpointRow>,
    pub error: String,
}

/// The create/edit form's values (never a header value).
#[derive(Default)]
pub struct FormValues {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub attribute_filters: String,
    pub filter: String,
    pub fields: String,
    pub header_names: Vec<String>,
    pub timeout: String,
    pub retry_schedule: String,
    pub max_in_flight: String,
    pub ordering: String,
    pub coalesce: bool,
    pub rate_limit: String,
    pub rate_burst: String,
    pub start: String,
    pub start_value: String,
}

#[derive(Template)]
#[template(path = "console/form.html")]
pub struct EndpointForm {
    pub frame: Frame,
    /// Empty when creating.
    pub id: String,
    pub v: FormValues,
    pub known_types: Vec<&'static str>,
    pub error: String,
}

#[derive(Template)]
#[template(path = "console/secret.html")]
pub struct Secret {
    pub frame: Frame,
    pub id: String,
    pub secret: String,
    pub what: String,
}

pub struct DeliveryRow {
    pub offset: u64,
    pub event_id: String,
    pub event_type: String,
    pub state: &'static str,
    pub attempts: u32,
    pub last: String,
    pub last_status: u32,
    pub last_error: String,
    pub next: String,
}

#[derive(Template)]
#[template(path = "console/endpoint.html")]
pub struct EndpointPage {
    pub frame: Frame,
    pub id: String,
    pub url: String,
    pub description: String,
    pub state: &'static str,
    pub reason: String,
    pub backlog: u64,
    pub settings: Vec<(&'static str, String)>,
    pub filter_state: String,
    pub filter_event_type: String,
    pub filter_event_id: String,
    pub filter_since: String,
    pub filter_until: String,
    /// The filter as a query string, kept across paging.
    pub filter_query: String,
    /// Whether "retry all matching" applies to the filter.
    pub recoverable: bool,
    /// After a retry-all dry run: how many match, and whether more than a
    /// call's worth do.
    pub recover_matched: Option<u64>,
    pub recover_more: bool,
    pub deliveries: Vec<DeliveryRow>,
    pub next_page: String,
    pub message: String,
    pub error: String,
    pub test_result: String,
}

pub struct AttemptRow {
    pub attempt: u32,
    pub started: String,
    pub latency: String,
    pub status: u32,
    pub error: String,
    pub body: String,
}

#[derive(Template)]
#[template(path = "console/delivery.html")]
pub struct DeliveryPage {
    pub frame: Frame,
    pub endpoint_id: String,
    pub offset: u64,
    pub delivery: Option<DeliveryRow>,
    pub explanation: String,
    pub attempts: Vec<AttemptRow>,
    pub event: String,
    pub snippets: Vec<(&'static str, String)>,
    /// The request as the receiver gets it (RenderDelivery); `request_error`
    /// when it cannot be rendered. Custom header values arrive redacted.
    pub request: Option<crate::model::endpoint::RenderedRequest>,
    pub request_error: String,
}

pub struct CatalogEntry {
    pub event_type: String,
    pub description: String,
    /// Where the sample comes from, in words.
    pub source: &'static str,
    /// The JSON Schema of the webhook body, pretty-printed.
    pub schema: String,
    pub sample: String,
    /// Whether the sample is a webhook body (the playground runs on it).
    pub playground: bool,
    /// The playground's inputs and outcome for this type, when it ran.
    pub filter: String,
    pub fields: String,
    /// The real event's offset it ran on (empty: the sample).
    pub offset: String,
    pub outcome: String,
    pub result: String,
}

#[derive(Template)]
#[template(path = "console/catalog.html")]
pub struct Catalog {
    pub frame: Frame,
    pub entries: Vec<CatalogEntry>,
    pub error: String,
}

#[derive(Template)]
#[template(path = "console/live.html")]
pub struct Live {
    pub frame: Frame,
    pub endpoint: String,
}
