//! The real broker in this process on `127.0.0.1:0`, and clients for it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use stevedore::{
    auth::{hash_token, Role, Token},
    config::Config,
    pb::{
        admin_client::AdminClient, publisher_client::PublisherClient,
        subscriber_client::SubscriberClient,
    },
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig},
};

/// A broker running in this process.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub config: Config,
    /// Crate-visible, like `handle` and `started`, so auth.rs can wrap a
    /// broker it started by hand.
    pub(crate) stop: Option<oneshot::Sender<()>>,
    /// The broker's task (the bad-input sweep checks it is still running).
    pub(crate) handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// What the broker reported when it was ready (the console's address).
    pub(crate) started: tokio::sync::watch::Receiver<Option<stevedore::Started>>,
}

impl TestServer {
    /// A broker on a fresh data directory with test-friendly defaults.
    pub async fn start() -> Self {
        Self::start_with(Arc::new(tempfile::tempdir().unwrap()), |_| {}).await
    }

    /// A broker on a fresh data directory that requires `tokens`, and
    /// serves TLS with a fresh self-signed certificate if `tls`.
    pub async fn start_secure(tokens: &[(&str, Role, &str)], tls: bool) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let cert = tls.then(|| self_signed(dir.path()));
        let tokens = test_tokens(tokens);
        Self::start_with(dir, move |c| {
            c.tokens = tokens;
            if let Some((cert, key)) = cert {
                c.tls_cert = Some(cert);
                c.tls_key = Some(key);
            }
        })
        .await
    }

    /// A broker on `dir`, with `tweak` applied to its config.
    pub async fn start_with(dir: Arc<tempfile::TempDir>, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            data_dir: dir.path().join("data"),
            state_cache_bytes: 8 * 1024 * 1024,
            // Receivers are local http:// servers, on loopback, which the
            // SSRF guard blocks unless allowed (tests/it/egress.rs turns
            // this off).
            allow_http: true,
            // Tests run many brokers at once; the metrics test binds its own.
            metrics_listen: None,
            console_listen: None,
            allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        tweak(&mut config);
        config.validate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        // The console only when a test asks for it (`console_listen`,
        // port 0): the default port would collide between parallel tests.
        let metrics = match config.metrics_listen {
            Some(a) => Some(TcpListener::bind(a).await.unwrap()),
            None => None,
        };
        let listeners = stevedore::Listeners {
            grpc: listener,
            metrics,
            console: stevedore::bind_console(&config).await.unwrap(),
        };
        let (started_tx, started) = tokio::sync::watch::channel(None);
        let handle = tokio::spawn(stevedore::serve(
            config.clone(),
            listeners,
            async {
                let _ = stopped.await;
            },
            move |s| {
                let _ = started_tx.send(Some(s.clone()));
            },
        ));
        Self {
            addr,
            dir,
            config,
            stop: Some(stop),
            handle: Some(handle),
            started,
        }
    }

    /// What the broker reported once ready: the console's URL and, with
    /// authentication off, its one-time login path.
    pub async fn started(&self) -> stevedore::Started {
        let mut rx = self.started.clone();
        let got = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| s.is_some()))
            .await
            .expect("the broker became ready in time")
            .expect("the broker started");
        got.clone().unwrap()
    }

    /// Stops gracefully and waits until the database is closed.
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        self.shutdown().await;
        self.dir.clone()
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), handle)
                .await
                .expect("graceful shutdown finished in time")
                .unwrap()
                .unwrap();
        }
    }

    /// Stops and starts again on the same data directory and config.
    pub async fn restart(self) -> Self {
        let config = self.config.clone();
        let dir = self.stop().await;
        Self::start_with(dir, |c| *c = config).await
    }

    /// A connection to the server: TLS trusting the server's certificate
    /// when it has one, else plaintext.
    pub async fn channel(&self) -> Channel {
        let endpoint = match &self.config.tls_cert {
            None => Channel::from_shared(format!("http://{}", self.addr)).unwrap(),
            // `domain_name` names the certificate; the address is the bound one.
            Some(cert) => Channel::from_shared(format!("https://{}", self.addr))
                .unwrap()
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(std::fs::read(cert).unwrap()))
                        .domain_name("localhost"),
                )
                .unwrap(),
        };
        endpoint.connect().await.unwrap()
    }

    /// A Publisher client that sends `token` (none: no credentials).
    pub async fn publisher_as(&self, token: Option<&str>) -> PublisherClient<Authed> {
        PublisherClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    /// A Subscriber client that sends `token`.
    pub async fn subscriber_as(&self, token: Option<&str>) -> SubscriberClient<Authed> {
        SubscriberClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    /// An Admin client that sends `token`.
    pub async fn admin_as(&self, token: Option<&str>) -> AdminClient<Authed> {
        AdminClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    pub async fn publisher(&self) -> PublisherClient<Channel> {
        PublisherClient::new(self.channel().await)
    }

    pub async fn subscriber(&self) -> SubscriberClient<Channel> {
        SubscriberClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A channel whose calls carry a bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call (nothing if `None`).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Self {
        Self(token.map(|t| format!("Bearer {t}").parse().unwrap()))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Config tokens for `(name, role, token)` triples.
pub fn test_tokens(tokens: &[(&str, Role, &str)]) -> Vec<Token> {
    tokens
        .iter()
        .map(|(name, role, token)| Token {
            name: name.to_string(),
            role: *role,
            tenant: None,
            sha256: hash_token(token.as_bytes()),
        })
        .collect()
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written to
/// `dir` as `cert.pem` and `key.pem`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A private CA and a client certificate it signed (for `client`, with
/// the client-auth usage), as PEM files under `dir`: the CA's certificate,
/// the client's certificate and the client's key.
pub fn client_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "stevedore test client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut client = rcgen::CertificateParams::new(vec!["stevedore-broker".into()]).unwrap();
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = client.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let paths = (
        dir.join("client-ca.pem"),
        dir.join("client.pem"),
        dir.join("client-key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The broker's data directory.
pub fn data_path(server: &TestServer) -> PathBuf {
    server.config.data_dir.clone()
}

/// The configuration of a [`MetricsBroker`]: data under `dir`, plain-HTTP
/// receivers on loopback allowed, no metrics or console address of its own
/// (the metrics listener is passed bound).
pub fn metrics_config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.join("data"),
        allow_http: true,
        allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
        metrics_listen: None,
        console_listen: None,
        ..Default::default()
    }
}

/// The broker in this process with its `/metrics` listener, for the tests
/// that scrape it: `config` as given, both listeners on loopback ports.
pub struct MetricsBroker {
    /// Where gRPC is served.
    pub addr: std::net::SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_addr: std::net::SocketAddr,
    /// A connected gRPC channel.
    pub channel: Channel,
    stop: oneshot::Sender<()>,
    server: JoinHandle<anyhow::Result<()>>,
}

impl MetricsBroker {
    /// Starts the broker with `config` and connects to it.
    pub async fn start(config: Config) -> Self {
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics_listener.local_addr().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(stevedore::run_with_metrics(
            config,
            listener,
            Some(metrics_listener),
            async {
                let _ = stopped.await;
            },
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            addr,
            metrics_addr,
            channel,
            stop,
            server,
        }
    }

    /// Stops it gracefully; it must end without an error.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
    }
}
