//! Smoke test of the benchmark program: `stevedore-bench quick` (small
//! sizes, one run each) runs every scenario end to end. Figures are not
//! checked: benchmarks print figures, they are not timed tests.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[test]
fn stevedore_bench_quick_runs_every_scenario() {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stevedore-bench"))
        .arg("quick")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start stevedore-bench");
    // A hung scenario must fail the test, not the CI run.
    let limit = Duration::from_secs(300);
    loop {
        if child.try_wait().expect("poll stevedore-bench").is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("stevedore-bench quick did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("stevedore-bench output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "stevedore-bench quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("QUICK RUN"), "{stdout}");
    for scenario in [
        "publish",
        "unary",
        "zerofill",
        "latency",
        "deliveries",
        "fanout",
        "isolation",
        "catchup",
        "memory",
        "restart",
    ] {
        assert!(
            stdout.contains(&format!("{scenario}: ")),
            "no figure of {scenario}:\n{stdout}"
        );
    }
}
