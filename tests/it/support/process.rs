//! The broker binary as a child process: start it on `127.0.0.1:0` and read
//! its address line, SIGKILL it, wait for its exit, read its stderr.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Waiting for the `listening on` line (a broker waits for its cluster to
/// answer before it listens; a loaded machine starts nodes slowly).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Connecting a channel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One run of the broker. Killed (SIGKILL) on drop.
pub struct Server {
    child: Child,
    pub addr: String,
    /// The stdout lines after the address line, as they come.
    later: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the binary; `env` is added to its environment (after
    /// `STEVEDORE_LOG=warn`, so it may override that).
    pub fn start(
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
        let later = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = later.clone();
        // Reads the one line, then keeps the rest until the process exits.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = line_tx.send(lines.next());
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child,
            addr: String::new(),
            later,
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

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The rest of the first stdout line that starts with `prefix` (the
    /// console's lines come after the address), waiting up to 10 s.
    pub async fn stdout_after(&self, prefix: &str) -> String {
        for _ in 0..100 {
            let found = self
                .later
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_owned));
            if let Some(rest) = found {
                return rest;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no stdout line starting with {prefix:?} within 10 s");
    }

    /// The broker's process id (to send it a signal).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the broker gracefully (SIGTERM) and waits up to `timeout` for
    /// its exit; its exit status, or None if it is still running.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM {}", self.pid());
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit
    /// status, or None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
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

pub fn read_stderr(logs: &Path, generation: u64) -> String {
    std::fs::read_to_string(stderr_path(logs, generation))
        .unwrap_or_else(|e| format!("<unreadable: {e}>"))
}

/// Every start's stderr, for a failure message.
pub fn all_stderr(logs: &Path, generations: u64) -> String {
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
/// extra environment variables for the broker.
pub async fn start_server_with_env(
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

/// A plaintext channel to `addr`, failing after `CONNECT_TIMEOUT`.
pub async fn connect(addr: &str) -> Result<Channel, String> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT);
    connect_to(addr, endpoint).await
}

/// A TLS channel to `addr` (a broker with `tls_cert`), trusting the PEM
/// certificate `ca` for `localhost`.
pub async fn connect_tls(addr: &str, ca: &Path) -> Result<Channel, String> {
    let ca = std::fs::read(ca).map_err(|e| e.to_string())?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT);
    connect_to(addr, endpoint).await
}

async fn connect_to(addr: &str, endpoint: tonic::transport::Endpoint) -> Result<Channel, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(format!("connecting to {addr}: {e}")),
        Err(_) => Err(format!(
            "connecting to {addr}: timed out after {CONNECT_TIMEOUT:?}"
        )),
    }
}

/// A failure line for each start whose stderr shows a panic.
pub fn broker_panics(logs: &Path, generations: u64) -> Vec<String> {
    (1..=generations)
        .filter(|&g| read_stderr(logs, g).contains("panicked"))
        .map(|g| format!("broker start #{g} panicked (see its stderr below)"))
        .collect()
}

/// A failed run's error and failures, a line each, for its panic message.
pub fn failure_text<T>(outcome: &Result<T, String>, failures: &[String]) -> String {
    let mut msg = String::new();
    if let Err(e) = outcome {
        msg.push_str(&format!("{e}\n"));
    }
    for f in failures {
        msg.push_str(&format!("{f}\n"));
    }
    msg
}
