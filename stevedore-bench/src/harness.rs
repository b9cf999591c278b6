//! What every scenario uses: an in-process broker, a broker in a child
//! process (for its own RSS), the benchmark event, endpoints, statistics.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use stevedore::{
    config::Config,
    pb::{self, admin_client::AdminClient, event::Payload, publisher_client::PublisherClient},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    sync::oneshot,
    task::JoinHandle,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// The broker configuration every scenario uses: the defaults, a data
/// directory, `allow_http` and the loopback allowance because the receivers
/// are local `http://` servers, and no metrics listener (several brokers may
/// run in one invocation).
pub fn config(data_dir: &Path) -> Config {
    Config {
        data_dir: data_dir.to_owned(),
        allow_http: true,
        allow_networks: vec!["127.0.0.0/8".parse().expect("a valid CIDR literal")],
        metrics_listen: None,
        console_listen: None,
        ..Config::default()
    }
}

/// [`config`] with `settings` (config keys and their values, as the
/// broker's `--key value` flags give them) laid over the defaults, e.g.
/// `backend` `jetstream` and the NATS keys of cluster mode.
pub fn config_with(data_dir: &Path, settings: &[(String, String)]) -> Result<Config> {
    let mut flags: Vec<(&str, String)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    flags.push(("data_dir", data_dir.display().to_string()));
    let base = config(data_dir);
    Ok(Config {
        allow_http: base.allow_http,
        allow_networks: base.allow_networks,
        metrics_listen: None,
        console_listen: None,
        ..Config::load(None, std::iter::empty(), &flags)?
    })
}

/// A fresh temporary directory (removed on drop) under `$TMPDIR`.
pub fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("stevedore-bench-")
        .tempdir()
        .context("creating a temporary directory")
}

/// A broker running in this process via [`stevedore::run`].
pub struct Broker {
    pub addr: SocketAddr,
    /// Its `/metrics` listener, when started with [`Broker::with_metrics`].
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<()>>>,
    // Declared last: removed after the broker has stopped.
    _dir: Option<tempfile::TempDir>,
}

impl Broker {
    /// A broker on a new, empty data directory.
    pub async fn fresh() -> Result<Self> {
        let dir = tempdir()?;
        let mut broker = Self::start(config(&dir.path().join("data"))).await?;
        broker._dir = Some(dir);
        Ok(broker)
    }

    /// A broker with `config`. Calls made before it serves wait for it.
    pub async fn start(config: Config) -> Result<Self> {
        Self::start_serving(config, false).await
    }

    /// A broker on a new, empty data directory with `tweak` applied to its
    /// configuration and a `/metrics` listener on `127.0.0.1`.
    pub async fn with_metrics(tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        let dir = tempdir()?;
        let mut config = config(&dir.path().join("data"));
        tweak(&mut config);
        let mut broker = Self::start_serving(config, true).await?;
        broker._dir = Some(dir);
        Ok(broker)
    }

    async fn start_serving(config: Config, metrics: bool) -> Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let metrics_listener = match metrics {
            true => Some(TcpListener::bind("127.0.0.1:0").await?),
            false => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(stevedore::run_with_metrics(
            config,
            listener,
            metrics_listener,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            addr,
            metrics_addr,
            stop: Some(stop),
            handle: Some(handle),
            _dir: None,
        })
    }

    /// The `stevedore_stall_*` samples of its `/metrics` (name with labels,
    /// value), in exposition order; empty without a metrics listener.
    pub async fn stall_samples(&self) -> Result<Vec<(String, f64)>> {
        let Some(addr) = self.metrics_addr else {
            return Ok(Vec::new());
        };
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let resp = client
            .get(format!("http://{addr}/metrics").parse()?)
            .await
            .context("GET /metrics")?;
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .context("reading /metrics")?
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).context("/metrics is not UTF-8")?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("stevedore_stall"))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect())
    }

    /// A new connection (one HTTP/2 connection per channel).
    pub async fn channel(&self) -> Result<Channel> {
        connect(self.addr).await
    }

    pub async fn publisher(&self) -> Result<PublisherClient<Channel>> {
        Ok(PublisherClient::new(self.channel().await?))
    }

    pub async fn admin(&self) -> Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.channel().await?))
    }

    /// Stops gracefully and waits until the database is closed.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .context("broker did not shut down within 60 s")?
                .context("broker task panicked")?
                .context("broker failed")?;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Connects a channel to `addr`.
pub async fn connect(addr: SocketAddr) -> Result<Channel> {
    Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// Whether the broker at `channel` reports the Publisher SERVING and a
/// publish succeeds.
pub async fn serving(channel: Channel, id: String) -> bool {
    let check = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "stevedore.v1.Publisher".into(),
        })
        .await;
    if !matches!(check, Ok(r) if r.get_ref().status() == ServingStatus::Serving) {
        return false;
    }
    PublisherClient::new(channel)
        .publish(pb::PublishRequest {
            event: Some(event(id, 0)),
        })
        .await
        .is_ok()
}

/// A broker in a child process (this program's hidden `__serve`), so its
/// memory can be read apart from the load generator's.
pub struct ChildBroker {
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl ChildBroker {
    /// Starts `stevedore-bench __serve --data-dir DIR` and reads the address
    /// it prints.
    pub async fn start(data_dir: &Path) -> Result<Self> {
        Self::start_with(data_dir, &[]).await
    }

    /// Starts `stevedore-bench __serve --data-dir DIR --set KEY=VALUE ...`
    /// (a broker configured by [`config_with`]) and reads the address it
    /// prints.
    pub async fn start_with(data_dir: &Path, settings: &[(String, String)]) -> Result<Self> {
        let exe = std::env::current_exe().context("locating this program")?;
        let mut command = tokio::process::Command::new(exe);
        command.arg("__serve").arg("--data-dir").arg(data_dir);
        for (key, value) in settings {
            command.arg("--set").arg(format!("{key}={value}"));
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the child broker")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("child broker did not print its address within 120 s")??
            .context("child broker exited before printing its address")?;
        let addr = line
            .strip_prefix("listening ")
            .context("unexpected first line from the child broker")?
            .parse()?;
        Ok(Self { addr, child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Closes the child's stdin (its shutdown signal) and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("child broker exited with {status}");
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("child broker did not stop within 60 s; killed")
            }
        }
    }
}

/// The hidden `__serve` mode: a broker on `data_dir` with `settings` laid
/// over [`config`] (see [`config_with`]) until stdin closes.
pub async fn serve_child(data_dir: PathBuf, settings: &[(String, String)]) -> Result<()> {
    let config = config_with(&data_dir, settings)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
        })
        .await;
    };
    stevedore::run(config, listener, stdin_closed).await
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
pub fn rss_of(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed status line")?
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The benchmark event: a `pick.confirmed` of six lines, about 1 KiB
/// encoded (see [`event_sizes`]). `i` varies the content and the ordering
/// key (the sales order), so events of different `i` are not ordered
/// against each other.
pub fn event(id: String, i: u64) -> pb::Event {
    let lines = (1..=6u64)
        .map(|n| pb::PickLine {
            line_number: Some(n as i32),
            product: format!("SKU-{:06}", (i * 7 + n) % 1_000_000),
            location: format!("A-{:02}-{:02}-B", n, i % 40),
            to_location: "PACK-STATION-03".into(),
            quantity_required: Some(4.0),
            quantity_processed: Some(4.0),
            quantity_short: Some(0.0),
            lot: format!("LOT-2026-{:04}", i % 10_000),
            serial01: format!("SN{:010}", i * 10 + n),
            serial02: format!("SN{:010}", i * 10 + n + 1),
            serial03: format!("SN{:010}", i * 10 + n + 2),
            unit_of_measure_code: "EA".into(),
            lpn: format!("LPN{:09}", i),
            ..Default::default()
        })
        .collect();
    pb::Event {
        id,
        payload: Some(Payload::PickConfirmed(pb::PickConfirmed {
            tenant_id: "TENANT001".into(),
            company_id: "COMPANY01".into(),
            fulfillment_center_id: "FC-EAST-01".into(),
            work_control_number: Some(i as i64),
            sales_order_id: format!("SO-{i:010}"),
            wave_id: format!("WAVE-{:06}", i / 100),
            status: pb::PickStatus::Complete as i32,
            total_qty: Some(24.0),
            total_lines: Some(6),
            last_activity_date: Some(prost_types::Timestamp {
                seconds: 1_780_000_000 + i as i64,
                nanos: 0,
            }),
            last_activity_team_member: "picker-17".into(),
            lines,
        })),
        ..Default::default()
    }
}

/// The benchmark event's encoded size and webhook body size, in bytes.
pub fn event_sizes() -> (usize, usize) {
    let e = event("bench-0000000001".into(), 123_456);
    let encoded = prost::Message::encoded_len(&e);
    let body = stevedore::webhook::render_body(&e).map_or(0, |b| b.len());
    (encoded, body)
}

/// Publishes `n` benchmark events (ids `{tag}-{i}`) with PublishBatch,
/// `batch` per request, from two concurrent callers.
pub async fn prefill(broker: &Broker, tag: &str, n: u64, batch: u64) -> Result<()> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut client = broker.publisher().await?;
        let next = next.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                if start >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let end = (start + batch).min(n);
                let events = (start..end)
                    .map(|i| event(format!("{tag}-{i}"), i))
                    .collect();
                client
                    .publish_batch(pb::PublishBatchRequest { events })
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// An endpoint for `url` with the broker's defaults.
pub fn endpoint(url: &str) -> pb::Endpoint {
    pb::Endpoint {
        url: url.into(),
        ..Default::default()
    }
}

/// Creates `e` and returns its id.
pub async fn create_endpoint(admin: &mut AdminClient<Channel>, e: pb::Endpoint) -> Result<String> {
    let r = admin
        .create_endpoint(pb::CreateEndpointRequest { endpoint: Some(e) })
        .await?
        .into_inner();
    Ok(r.endpoint.context("endpoint in response")?.id)
}

/// A protobuf duration.
pub fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Waits until `check` is true, checking every `every`, failing after
/// `timeout`.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: not done within {timeout:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Nearest-rank percentile of unsorted `values` (`p` in 0..=100).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
