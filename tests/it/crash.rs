//! Crash test for the acknowledgement guarantee: an acknowledged publish is
//! durable, and re-publishing an id never writes it twice, across SIGKILLs.
//!
//! Runs the real binary on one data directory, kills it with SIGKILL at
//! random-ish moments while four publishers keep publishing (unary, batch and
//! stream), restarts it, and checks the log against every ack received.
//!
//! Reproduce a run with `STEVEDORE_CRASH_SEED=<seed printed by the test>`.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use stevedore::pb::{
    self, event::Payload, publisher_client::PublisherClient, subscribe_request::Start,
    subscriber_client::SubscriberClient, AckMode, GetEventRequest, PublishBatchRequest,
    PublishRequest, PublishResponse, SubscribeRequest,
};
use tokio::sync::watch;
use tonic::{transport::Channel, Code};

/// Publisher tasks.
const PUBLISHERS: usize = 4;
/// SIGKILL/restart cycles.
const CYCLES: usize = 5;
/// Load between a (re)start and its kill, in milliseconds.
const KILL_AFTER_MS: (u64, u64) = (150, 400);
/// Load on the last server before the publishers stop.
const FINAL_LOAD: Duration = Duration::from_millis(300);
/// Waiting for the `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting a channel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One publish call (a unary call, a batch or a whole stream) or one read.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// All publishers noticing a kill (bounded by CALL_TIMEOUT in practice).
const PARK_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading the whole log with Subscribe.
const SCAN_TIMEOUT: Duration = Duration::from_secs(15);
/// The whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(50);
/// PublishStream: requests outstanding before the first ack.
const STREAM_WINDOW: usize = 8;

// ------------------------------------------------------------------ process

/// One run of the broker. Killed (SIGKILL) on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
}

impl Server {
    /// Starts the binary; `env` is added to its environment (after
    /// `STEVEDORE_LOG=warn`, so it may override that).
    pub(crate) fn start(
        data_dir: &Path,
        logs: &Path,
        generation: u64,
        env: Vec<(String, String)>,
    ) -> Result<Server, String> {
        let stderr_path = stderr_path(logs, generation);
        let stderr =
            File::create(&stderr_path).map_err(|e| format!("creating {stderr_path:?}: {e}"))?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_stevedore"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("STEVEDORE_LOG", "warn")
            // Several brokers run at once; none needs the metrics port.
            .env("STEVEDORE_METRICS_LISTEN", "off")
            .env("STEVEDORE_CONSOLE_LISTEN", "off")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| format!("spawning the broker: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        // Reads the one line, then drains stdout until the process exits.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = line_tx.send(lines.next());
            for _ in lines {}
        });
        let mut server = Server {
            child,
            addr: String::new(),
        };
        let line = match line_rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(other) => {
                let status = server.child.wait().ok();
                return Err(format!(
                    "broker (start #{generation}) printed no address line ({other:?}), exit status {status:?}; stderr:\n{}",
                    read_stderr(logs, generation)
                ));
            }
            Err(_) => {
                server.kill();
                return Err(format!(
                    "broker (start #{generation}) did not print its address within {START_TIMEOUT:?}; stderr:\n{}",
                    read_stderr(logs, generation)
                ));
            }
        };
        server.addr = line
            .strip_prefix("stevedore listening on ")
            .ok_or_else(|| format!("unexpected first stdout line {line:?}"))?
            .trim()
            .to_owned();
        Ok(server)
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The broker's process id (to send it a signal).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit
    /// status, or None if it is still running.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return None,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn stderr_path(logs: &Path, generation: u64) -> PathBuf {
    logs.join(format!("stderr-{generation}.log"))
}

pub(crate) fn read_stderr(logs: &Path, generation: u64) -> String {
    std::fs::read_to_string(stderr_path(logs, generation))
        .unwrap_or_else(|e| format!("<unreadable: {e}>"))
}

/// Every start's stderr, for a failure message.
pub(crate) fn all_stderr(logs: &Path, generations: u64) -> String {
    let mut out = String::new();
    for g in 1..=generations {
        let text = read_stderr(logs, g);
        if !text.trim().is_empty() {
            out.push_str(&format!("--- stderr of start #{g} ---\n{text}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("(every start's stderr is empty)\n");
    }
    out
}

/// [`Server::start`] off the async workers (it blocks reading stdout), with
/// the smallest event-log segments, so that kills also land around segment
/// changes.
async fn start_server(data_dir: &Path, logs: &Path, generation: u64) -> Result<Server, String> {
    start_server_with_env(
        data_dir,
        logs,
        generation,
        &[("STEVEDORE_LOG_SEGMENT_BYTES", "65536")],
    )
    .await
}

/// [`start_server`] with extra environment variables for the broker.
pub(crate) async fn start_server_with_env(
    data_dir: &Path,
    logs: &Path,
    generation: u64,
    env: &[(&str, &str)],
) -> Result<Server, String> {
    let (data_dir, logs) = (data_dir.to_owned(), logs.to_owned());
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || Server::start(&data_dir, &logs, generation, env))
        .await
        .map_err(|e| format!("starting the broker: {e}"))?
}

pub(crate) async fn connect(addr: &str) -> Result<Channel, String> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT);
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(format!("connecting to {addr}: {e}")),
        Err(_) => Err(format!(
            "connecting to {addr}: timed out after {CONNECT_TIMEOUT:?}"
        )),
    }
}

// ------------------------------------------------------------------ events

/// Small deterministic PRNG (xorshift64*), so a seed reproduces a run's
/// choices (though not its timing).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The payload of event `p{task}-{seq}`; a function of the id, so any
/// stored event can be checked against it.
fn payload(task: usize, seq: u64) -> Payload {
    if seq.is_multiple_of(2) {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("task".to_owned(), number(task as f64));
        fields.insert("seq".to_owned(), number(seq as f64));
        Payload::Custom(pb::CustomEvent {
            r#type: "crash.test".into(),
            data: Some(prost_types::Struct { fields }),
        })
    } else {
        Payload::PickConfirmed(pb::PickConfirmed {
            tenant_id: "crash-tenant".into(),
            fulfillment_center_id: "FC1".into(),
            sales_order_id: format!("SO-{task}-{seq}"),
            ..Default::default()
        })
    }
}

fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    }
}

fn make_event(task: usize, seq: u64) -> pb::Event {
    pb::Event {
        id: format!("p{task}-{seq}"),
        payload: Some(payload(task, seq)),
        ..Default::default()
    }
}

/// The payload an id of ours must carry, or None for a foreign id.
fn expected_payload(id: &str) -> Option<Payload> {
    let (task, seq) = id.strip_prefix('p')?.split_once('-')?;
    Some(payload(task.parse().ok()?, seq.parse().ok()?))
}

// ------------------------------------------------------------------ ledger

/// Everything the publishers were told, checked as it arrives.
#[derive(Default)]
struct Ledger {
    /// Acknowledged id → offset.
    acked: HashMap<String, u64>,
    /// Acknowledged offset → id.
    by_offset: HashMap<u64, String>,
    /// Every id ever sent.
    sent: HashSet<String>,
    acks: u64,
    /// Acks with `duplicate: true`.
    duplicates: u64,
    /// ... of which for an id that had never been acked (the first ack was
    /// lost to the kill, but the write had been committed).
    lost_acks_recovered: u64,
    /// ... of which for an id deliberately re-sent after its ack.
    resend_checks: u64,
}

impl Ledger {
    /// Records one ack for `id`; Err describes a broken guarantee.
    fn record(&mut self, id: &str, resp: &PublishResponse, generation: u64) -> Result<(), String> {
        self.acks += 1;
        if resp.event_id != id {
            return Err(format!(
                "start #{generation}: ack for {id:?} names event_id {:?} (offset {})",
                resp.event_id, resp.offset
            ));
        }
        if resp.offset == 0 {
            return Err(format!("start #{generation}: ack for {id:?} has offset 0"));
        }
        if resp.duplicate {
            self.duplicates += 1;
        }
        match self.acked.get(id) {
            Some(&earlier) => {
                if !resp.duplicate {
                    return Err(format!(
                        "start #{generation}: {id:?} was acknowledged at offset {earlier} before, \
                         yet re-publishing it returned duplicate=false at offset {} (written twice)",
                        resp.offset
                    ));
                }
                if resp.offset != earlier {
                    return Err(format!(
                        "start #{generation}: {id:?} was acknowledged at offset {earlier}, \
                         but its duplicate ack says offset {}",
                        resp.offset
                    ));
                }
                self.resend_checks += 1;
                Ok(())
            }
            None => {
                if resp.duplicate {
                    self.lost_acks_recovered += 1;
                }
                if let Some(other) = self.by_offset.get(&resp.offset) {
                    return Err(format!(
                        "start #{generation}: offset {} acknowledged for both {other:?} and {id:?}",
                        resp.offset
                    ));
                }
                self.acked.insert(id.to_owned(), resp.offset);
                self.by_offset.insert(resp.offset, id.to_owned());
                Ok(())
            }
        }
    }
}

// ------------------------------------------------------------------ publishers

struct Shared {
    /// `(generation, address)` of the server to use; None between a kill and
    /// the end of the post-restart check.
    addr: watch::Receiver<Option<(u64, String)>>,
    /// Highest generation that was sent SIGKILL; set just before the kill,
    /// so any failure it causes is seen after the store.
    killed: AtomicU64,
    /// Per task: the generation whose failure the task has seen (it waits
    /// for a later one).
    parked: Mutex<Vec<u64>>,
    finished: Vec<AtomicBool>,
    /// No fresh events: flush what is un-acked, then return.
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
    /// Broken guarantees and failures on a live server.
    failures: Mutex<Vec<String>>,
    /// Failed calls explained by a kill.
    crash_errors: AtomicU64,
    calls: [AtomicU64; 3],
}

impl Shared {
    fn fail(&self, msg: String) {
        eprintln!("crash test failure: {msg}");
        self.failures.lock().unwrap().push(msg);
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Mode {
    Unary,
    Batch,
    Stream,
}

async fn publisher(task: usize, sh: Arc<Shared>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut addr_rx = sh.addr.clone();
    let mut seq = 0u64;
    // Sent but not acknowledged, oldest first; retried before anything new.
    let mut pending: Vec<pb::Event> = Vec::new();
    let mut my_acked: Vec<String> = Vec::new();
    let mut failed_gen = 0u64;
    'servers: loop {
        // The next server after the one that failed us.
        let (generation, addr) = loop {
            if let Some((g, a)) = addr_rx.borrow_and_update().clone() {
                if g > failed_gen {
                    break (g, a);
                }
            }
            if addr_rx.changed().await.is_err() {
                sh.fail(format!("publisher {task}: the coordinator went away"));
                break 'servers;
            }
        };
        let failure = |sh: &Shared, what: String| {
            if generation > sh.killed.load(Ordering::SeqCst) {
                sh.fail(format!(
                    "publisher {task}: {what} on live server start #{generation}"
                ));
            } else {
                sh.crash_errors.fetch_add(1, Ordering::Relaxed);
            }
            sh.parked.lock().unwrap()[task] = generation;
        };
        let channel = match connect(&addr).await {
            Ok(c) => c,
            Err(e) => {
                failure(&sh, e);
                failed_gen = generation;
                continue;
            }
        };
        let mut client = PublisherClient::new(channel);
        loop {
            let stopping = sh.stop.load(Ordering::SeqCst);
            if stopping && pending.is_empty() {
                break 'servers;
            }
            let mode = match rng.next() % 3 {
                0 => Mode::Unary,
                1 => Mode::Batch,
                _ => Mode::Stream,
            };
            let size = match mode {
                Mode::Unary => 1,
                Mode::Batch => rng.range(5, 15) as usize,
                Mode::Stream => rng.range(10, 30) as usize,
            };
            // Un-acked events first, then now and then an acked one again
            // (must come back duplicate with its offset), then fresh ones.
            let mut events: Vec<pb::Event> = pending.iter().take(size).cloned().collect();
            if !stopping
                && events.len() < size
                && !my_acked.is_empty()
                && rng.next().is_multiple_of(4)
            {
                let id = &my_acked[rng.next() as usize % my_acked.len()];
                let (t, s) = id[1..].split_once('-').unwrap();
                events.push(make_event(t.parse().unwrap(), s.parse().unwrap()));
            }
            while !stopping && events.len() < size {
                let e = make_event(task, seq);
                seq += 1;
                sh.ledger.lock().unwrap().sent.insert(e.id.clone());
                pending.push(e.clone());
                events.push(e);
            }

            let mut acks = Vec::with_capacity(events.len());
            sh.calls[mode as usize].fetch_add(1, Ordering::Relaxed);
            let result = match tokio::time::timeout(
                CALL_TIMEOUT,
                call(&mut client, mode, &events, &mut acks),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "{} call timed out after {CALL_TIMEOUT:?}",
                    mode_name(mode)
                )),
            };
            {
                let mut ledger = sh.ledger.lock().unwrap();
                for (e, ack) in events.iter().zip(&acks) {
                    if let Err(msg) = ledger.record(&e.id, ack, generation) {
                        drop(ledger);
                        sh.fail(msg);
                        ledger = sh.ledger.lock().unwrap();
                    }
                }
            }
            for (e, ack) in events.iter().zip(&acks) {
                if let Some(i) = pending.iter().position(|p| p.id == e.id) {
                    pending.remove(i);
                    if ack.event_id == e.id {
                        my_acked.push(e.id.clone());
                    }
                }
            }
            let result = result.and_then(|()| {
                if acks.len() == events.len() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} call succeeded with {} acks for {} events",
                        mode_name(mode),
                        acks.len(),
                        events.len()
                    ))
                }
            });
            if let Err(e) = result {
                failure(&sh, e);
                failed_gen = generation;
                continue 'servers;
            }
        }
    }
    sh.finished[task].store(true, Ordering::SeqCst);
}

pub(crate) fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Unary => "Publish",
        Mode::Batch => "PublishBatch",
        Mode::Stream => "PublishStream",
    }
}

pub(crate) fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// One publish call. Acks received are pushed to `acks` as they arrive, so a
/// call that fails (or is cancelled by a timeout) midway keeps them.
pub(crate) async fn call(
    client: &mut PublisherClient<Channel>,
    mode: Mode,
    events: &[pb::Event],
    acks: &mut Vec<PublishResponse>,
) -> Result<(), String> {
    let req = |e: &pb::Event| PublishRequest {
        event: Some(e.clone()),
    };
    match mode {
        Mode::Unary => {
            let r = client
                .publish(req(&events[0]))
                .await
                .map_err(|s| format!("Publish: {}", status_text(&s)))?;
            acks.push(r.into_inner());
        }
        Mode::Batch => {
            let r = client
                .publish_batch(PublishBatchRequest {
                    events: events.to_vec(),
                })
                .await
                .map_err(|s| format!("PublishBatch: {}", status_text(&s)))?;
            acks.extend(r.into_inner().results);
        }
        Mode::Stream => {
            // Pipelined: a window of requests ahead of the acks.
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_WINDOW);
            let mut sent = 0;
            // At most STREAM_WINDOW requests are un-acked, so the channel
            // never fills; it only fails once the call is torn down.
            let closed = || "PublishStream: request stream closed".to_owned();
            while sent < events.len() && sent < STREAM_WINDOW {
                tx.try_send(req(&events[sent])).map_err(|_| closed())?;
                sent += 1;
            }
            let mut responses = client
                .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| format!("PublishStream: {}", status_text(&s)))?
                .into_inner();
            while acks.len() < events.len() {
                match responses.message().await {
                    Ok(Some(r)) => {
                        acks.push(r);
                        if sent < events.len() {
                            tx.try_send(req(&events[sent])).map_err(|_| closed())?;
                            sent += 1;
                        }
                    }
                    Ok(None) => {
                        return Err(format!(
                            "PublishStream ended after {} of {} acks",
                            acks.len(),
                            events.len()
                        ))
                    }
                    Err(s) => return Err(format!("PublishStream: {}", status_text(&s))),
                }
            }
            drop(tx);
            match responses.message().await {
                Ok(None) => {}
                Ok(Some(r)) => {
                    return Err(format!("PublishStream: unexpected extra response {r:?}"))
                }
                Err(s) => return Err(format!("PublishStream close: {}", status_text(&s))),
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ checks

struct Checked {
    head: u64,
    /// Events in the log that were never acknowledged (written, ack lost).
    unacked_in_log: usize,
}

/// Checks the log against `acked` while nothing publishes. `exact`: every id
/// in the log must have been acknowledged.
async fn check_log(
    addr: &str,
    generation: u64,
    acked: &HashMap<String, u64>,
    sent: &HashSet<String>,
    exact: bool,
) -> Result<Checked, String> {
    let mut client = SubscriberClient::new(connect(addr).await?);

    // 1. Point reads of every acknowledged event.
    let mut reads = futures::stream::iter(acked.iter().map(|(id, &offset)| {
        let mut client = client.clone();
        async move {
            let got = tokio::time::timeout(CALL_TIMEOUT, client.get_event(GetEventRequest { offset, ..Default::default() })).await;
            let resp = match got {
                Err(_) => return Err(format!("GetEvent({offset}) timed out after {CALL_TIMEOUT:?}")),
                Ok(Err(s)) => {
                    return Err(format!(
                        "acknowledged {id:?} at offset {offset} is missing: GetEvent({offset}) -> {}",
                        status_text(&s)
                    ))
                }
                Ok(Ok(r)) => r.into_inner(),
            };
            let event = resp.event.unwrap_or_default();
            if resp.offset != offset || event.id != *id {
                return Err(format!(
                    "acknowledged {id:?} at offset {offset}, but GetEvent({offset}) returns {:?} at offset {}",
                    event.id, resp.offset
                ));
            }
            if event.payload != expected_payload(id) {
                return Err(format!("{id:?} at offset {offset}: payload differs: {:?}", event.payload));
            }
            Ok(())
        }
    }))
    .buffer_unordered(16);
    while let Some(r) = reads.next().await {
        r.map_err(|e| format!("after start #{generation}: {e}"))?;
    }
    drop(reads);

    // 2. The whole log, replayed, up to the head. The log is quiescent, so
    //    the head is where GetEvent first finds nothing.
    let deadline = Instant::now() + SCAN_TIMEOUT;
    let mut stream = tokio::time::timeout(
        CALL_TIMEOUT,
        client.subscribe(SubscribeRequest {
            start: Some(Start::Earliest(true)),
            ack_mode: AckMode::None as i32,
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| format!("Subscribe timed out after {CALL_TIMEOUT:?}"))?
    .map_err(|s| format!("Subscribe: {}", status_text(&s)))?
    .into_inner();
    let mut log: Vec<(u64, String)> = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "after start #{generation}: reading the log took over {SCAN_TIMEOUT:?} ({} events read)",
                log.len()
            ));
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
            Ok(Ok(Some(m))) => {
                let event = m.event.unwrap_or_default();
                if let Some(expected) = expected_payload(&event.id) {
                    if event.payload != Some(expected) {
                        return Err(format!(
                            "after start #{generation}: {:?} at offset {}: payload differs",
                            event.id, m.offset
                        ));
                    }
                }
                log.push((m.offset, event.id));
            }
            Ok(Ok(None)) => {
                return Err(format!("after start #{generation}: Subscribe stream ended"))
            }
            Ok(Err(s)) => {
                return Err(format!(
                    "after start #{generation}: Subscribe: {}",
                    status_text(&s)
                ))
            }
            Err(_) => {
                // Idle: is there anything after what we have?
                let probe = log.last().map_or(1, |(o, _)| o + 1);
                match tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.get_event(GetEventRequest {
                        offset: probe,
                        ..Default::default()
                    }),
                )
                .await
                {
                    Err(_) => return Err(format!("GetEvent({probe}) timed out")),
                    Ok(Err(s)) if s.code() == Code::NotFound => break,
                    Ok(Err(s)) => return Err(format!("GetEvent({probe}): {}", status_text(&s))),
                    Ok(Ok(_)) => {} // the stream is just slow; keep reading
                }
            }
        }
    }
    drop(stream);

    let head = log.last().map_or(1, |(o, _)| o + 1);
    let mut seen: HashMap<&str, u64> = HashMap::new();
    let mut prev = 0u64;
    for (offset, id) in &log {
        if *offset <= prev {
            return Err(format!(
                "after start #{generation}: log offsets not strictly increasing: {offset} after {prev}"
            ));
        }
        if *offset != prev + 1 {
            return Err(format!(
                "after start #{generation}: gap in the log: offset {offset} follows {prev} (offsets are documented dense)"
            ));
        }
        prev = *offset;
        if let Some(first) = seen.insert(id, *offset) {
            return Err(format!(
                "after start #{generation}: {id:?} is in the log twice, at offsets {first} and {offset}"
            ));
        }
        if !sent.contains(id) {
            return Err(format!(
                "after start #{generation}: unknown id {id:?} at offset {offset}"
            ));
        }
    }
    let mut unacked_in_log = 0;
    for (_, id) in &log {
        if !acked.contains_key(id) {
            unacked_in_log += 1;
            if exact {
                return Err(format!(
                    "at the end: {id:?} is in the log at offset {} but was never acknowledged, \
                     although every publisher retried until acked",
                    seen[id.as_str()]
                ));
            }
        }
    }
    for (id, offset) in acked {
        match seen.get(id.as_str()) {
            Some(o) if o == offset => {}
            Some(o) => {
                return Err(format!(
                    "after start #{generation}: {id:?} acknowledged at offset {offset} but replayed at offset {o}"
                ))
            }
            None => {
                return Err(format!(
                    "after start #{generation}: acknowledged {id:?} (offset {offset}) is missing from the replay \
                     (head {head})"
                ))
            }
        }
    }
    Ok(Checked {
        head,
        unacked_in_log,
    })
}

// ------------------------------------------------------------------ the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_sigkill() {
    let seed = std::env::var("STEVEDORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash test seed: {seed} (rerun with STEVEDORE_CRASH_SEED={seed})");
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let logs = dir.path().to_owned();

    let (addr_tx, addr_rx) = watch::channel(None);
    let sh = Arc::new(Shared {
        addr: addr_rx,
        killed: AtomicU64::new(0),
        parked: Mutex::new(vec![0; PUBLISHERS]),
        finished: (0..PUBLISHERS).map(|_| AtomicBool::new(false)).collect(),
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
        failures: Mutex::new(Vec::new()),
        crash_errors: AtomicU64::new(0),
        calls: Default::default(),
    });
    let generations = Arc::new(AtomicU64::new(0));

    let started = Instant::now();
    let body = run(
        seed,
        &data_dir,
        &logs,
        addr_tx,
        sh.clone(),
        generations.clone(),
    );
    let outcome = match tokio::time::timeout(TEST_TIMEOUT, body).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the crash test did not finish within {TEST_TIMEOUT:?}"
        )),
    };
    let failures = std::mem::take(&mut *sh.failures.lock().unwrap());
    let gens = generations.load(Ordering::SeqCst);
    if outcome.is_err() || !failures.is_empty() {
        let kept = dir.keep();
        let mut msg = String::new();
        if let Err(e) = &outcome {
            msg.push_str(&format!("{e}\n"));
        }
        for f in &failures {
            msg.push_str(&format!("{f}\n"));
        }
        panic!(
            "crash test failed (seed {seed}, data dir kept at {}):\n{msg}{}",
            kept.display(),
            all_stderr(&kept, gens)
        );
    }
    let summary = outcome.unwrap();
    let ledger = sh.ledger.lock().unwrap();
    let repairs = (1..=gens)
        .filter(|&g| read_stderr(&logs, g).contains("cut an incomplete tail"))
        .count();
    let segments = std::fs::read_dir(data_dir.join("events"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
        })
        .unwrap_or(0);
    println!(
        "crash test: {CYCLES} SIGKILL cycles, {gens} starts, {:.1}s; {} events acknowledged ({} acks), \
         {} duplicate acks ({} for ids whose first ack was lost to a kill, {} for re-sent acked ids); \
         calls unary/batch/stream {}/{}/{}, {} failed by kills; {} events written but unacked seen after restarts; \
         torn log tails cut on {} starts; {} event-log segments; final head {}",
        started.elapsed().as_secs_f64(),
        ledger.acked.len(),
        ledger.acks,
        ledger.duplicates,
        ledger.lost_acks_recovered,
        ledger.resend_checks,
        sh.calls[0].load(Ordering::Relaxed),
        sh.calls[1].load(Ordering::Relaxed),
        sh.calls[2].load(Ordering::Relaxed),
        sh.crash_errors.load(Ordering::Relaxed),
        summary.unacked_after_restarts,
        repairs,
        segments,
        summary.final_head,
    );
}

struct Summary {
    unacked_after_restarts: usize,
    final_head: u64,
}

async fn run(
    seed: u64,
    data_dir: &Path,
    logs: &Path,
    addr_tx: watch::Sender<Option<(u64, String)>>,
    sh: Arc<Shared>,
    generations: Arc<AtomicU64>,
) -> Result<Summary, String> {
    let mut rng = Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15);
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|t| tokio::spawn(publisher(t, sh.clone(), seed.wrapping_add(t as u64 * 7919))))
        .collect();
    let mut unacked_after_restarts = 0;

    let snapshot = |sh: &Shared| {
        let l = sh.ledger.lock().unwrap();
        (l.acked.clone(), l.sent.clone())
    };

    let mut generation = 1u64;
    generations.store(generation, Ordering::SeqCst);
    let mut server = start_server(data_dir, logs, generation).await?;
    addr_tx.send_replace(Some((generation, server.addr.clone())));

    for cycle in 1..=CYCLES {
        tokio::time::sleep(Duration::from_millis(
            rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1),
        ))
        .await;
        // Publishers must not find the next server before it is checked.
        addr_tx.send_replace(None);
        sh.killed.store(generation, Ordering::SeqCst);
        server.kill();
        let acked_before_kill = sh.ledger.lock().unwrap().acked.len();

        // Wait until every publisher has seen the kill, so every ack it got
        // from the dead server is in the ledger.
        let waited = Instant::now();
        loop {
            let parked = sh.parked.lock().unwrap().clone();
            let all = (0..PUBLISHERS)
                .all(|t| parked[t] >= generation || sh.finished[t].load(Ordering::SeqCst));
            if all {
                break;
            }
            if waited.elapsed() > PARK_TIMEOUT {
                return Err(format!(
                    "cycle {cycle}: publishers did not notice the kill of start #{generation} within \
                     {PARK_TIMEOUT:?} (parked at {parked:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        generation += 1;
        generations.store(generation, Ordering::SeqCst);
        server = start_server(data_dir, logs, generation).await?;
        let (acked, sent) = snapshot(&sh);
        let checked = check_log(&server.addr, generation, &acked, &sent, false).await?;
        unacked_after_restarts += checked.unacked_in_log;
        println!(
            "cycle {cycle}: killed start #{} ({} acked so far, {} at the kill), restarted: head {}, \
             {} written-but-unacked events in the log",
            generation - 1,
            acked.len(),
            acked_before_kill,
            checked.head,
            checked.unacked_in_log
        );
        addr_tx.send_replace(Some((generation, server.addr.clone())));
    }

    // Last server: a little more load, then every publisher flushes its
    // un-acked events and stops.
    tokio::time::sleep(FINAL_LOAD).await;
    sh.stop.store(true, Ordering::SeqCst);
    for (t, task) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(15), task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("publisher {t} panicked: {e}")),
            Err(_) => {
                return Err(format!(
                    "publisher {t} did not finish within 15s after stop"
                ))
            }
        }
    }
    let (acked, sent) = snapshot(&sh);
    let checked = check_log(&server.addr, generation, &acked, &sent, true).await?;
    if checked.head != acked.len() as u64 + 1 {
        return Err(format!(
            "at the end: head {} but {} ids acknowledged",
            checked.head,
            acked.len()
        ));
    }
    drop(server);
    Ok(Summary {
        unacked_after_restarts,
        final_head: checked.head,
    })
}
