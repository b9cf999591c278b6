//! The binary's start: it announces `listening on` only once it serves, and
//! says clearly why it will not start.

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::Server;

/// A broker that refuses to start exits within this.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

struct Exited {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `stevedore serve` on `data_dir` with `env` and waits for it to exit
/// by itself (it is killed, and the test fails, after [`EXIT_TIMEOUT`]).
fn serve_expecting_exit(data_dir: &Path, env: &[(&str, &str)]) -> Exited {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stevedore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("STEVEDORE_METRICS_LISTEN", "off")
        .env("STEVEDORE_CONSOLE_LISTEN", "off")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the broker");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the broker did not exit within {EXIT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Exited {
        success: status.success(),
        stdout,
        stderr,
    }
}

#[test]
fn a_second_broker_on_the_same_data_directory_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _first = Server::start(&data, logs.path(), 1, Vec::new()).expect("first broker starts");

    let second = serve_expecting_exit(&data, &[]);
    assert!(!second.success);
    assert!(
        !second.stdout.contains("listening on"),
        "a broker that does not serve announced an address: {:?}",
        second.stdout
    );
    assert!(
        second
            .stderr
            .contains("another broker (or process) holds the data directory"),
        "{}",
        second.stderr
    );
    assert_eq!(
        second.stderr.matches("holds the data directory").count(),
        1,
        "said once: {}",
        second.stderr
    );
}

#[test]
fn a_misspelt_log_level_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = serve_expecting_exit(&dir.path().join("data"), &[("STEVEDORE_LOG", "debugg")]);
    assert!(!run.success);
    assert!(!run.stdout.contains("listening on"), "{:?}", run.stdout);
    assert!(
        run.stderr
            .contains("STEVEDORE_LOG: `debugg` is not a level (did you mean `debug`?)"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_bad_tls_file_is_reported_before_any_address_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let cert = cert.to_str().unwrap();
    let run = serve_expecting_exit(
        &dir.path().join("data"),
        &[("STEVEDORE_TLS_CERT", cert), ("STEVEDORE_TLS_KEY", cert)],
    );
    assert!(!run.success);
    assert!(!run.stdout.contains("listening on"), "{:?}", run.stdout);
    assert!(run.stderr.contains("tls_cert"), "{}", run.stderr);
}

#[test]
fn the_egress_relaxations_are_logged_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let mut server = Server::start(
        &dir.path().join("data"),
        logs.path(),
        1,
        vec![
            env("STEVEDORE_LOG", "info"),
            env("STEVEDORE_ALLOW_HTTP", "true"),
            env("STEVEDORE_ALLOW_NETWORKS", "10.20.0.0/16"),
        ],
    )
    .expect("the broker starts");
    // The lines are written before `listening on`; a kill flushes nothing
    // more, so what is in the file now is what was logged at start.
    server.kill();
    let stderr = crate::support::read_stderr(logs.path(), 1);
    assert!(stderr.contains("allow_http is on"), "{stderr}");
    assert!(
        stderr.contains("allow_networks is set") && stderr.contains("10.20.0.0/16"),
        "{stderr}"
    );
}
