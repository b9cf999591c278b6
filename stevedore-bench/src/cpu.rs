//! CPU time over a measured span of a scenario, and hooks that let a
//! profiler (callgrind, perf) look at that span alone.

use std::time::Duration;

use anyhow::Context;

/// CPU time used by this process so far (user + system, all threads), from
/// `/proc/self/stat` in clock ticks (USER_HZ, 100 on Linux).
fn process_cpu() -> Duration {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// CPU time used so far by the process `pid` (user + system, all its
/// threads), from `/proc/<pid>/stat` in 10 ms ticks.
pub fn cpu_of(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(stat_cpu(&stat))
}

/// utime + stime of a `/proc/<pid>/stat` line.
fn stat_cpu(stat: &str) -> Duration {
    // The fields after the command name, which is in parentheses and may
    // hold spaces: the first of them is field 3, so utime (14) and stime
    // (15) are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// A measured span: the process's CPU time over it; and, for profiling
/// the span alone:
/// - with `STEVEDORE_BENCH_CALLGRIND` set (the program running under
///   `valgrind --tool=callgrind`), callgrind's counters are zeroed at its
///   start and dumped at its end, so the dump holds exact instruction
///   counts of the span;
/// - with `STEVEDORE_BENCH_PERF_CTL` naming the control FIFO of a
///   `perf record --control fifo:CTL -D -1` (started disabled), perf is
///   enabled at the start of each of the broker's spans (not the raw
///   client's) and disabled at its end.
pub struct Phase {
    name: &'static str,
    cpu: Duration,
}

/// The name of the raw client's spans.
pub const RAW: &str = "raw";

impl Phase {
    pub fn start(name: &'static str) -> Self {
        callgrind("--zero".into());
        if name != RAW {
            perf_control("enable");
        }
        Self {
            name,
            cpu: process_cpu(),
        }
    }

    /// The CPU time since the start.
    pub fn end(self) -> Duration {
        let cpu = process_cpu().saturating_sub(self.cpu);
        if self.name != RAW {
            perf_control("disable");
        }
        callgrind(format!("--dump={}", self.name));
        cpu
    }
}

fn perf_control(command: &str) {
    if let Some(fifo) = std::env::var_os("STEVEDORE_BENCH_PERF_CTL") {
        if let Err(e) = std::fs::write(&fifo, format!("{command}\n")) {
            eprintln!("perf control {fifo:?}: {e}");
        }
    }
}

fn callgrind(command: String) {
    if std::env::var_os("STEVEDORE_BENCH_CALLGRIND").is_some() {
        let status = std::process::Command::new("callgrind_control")
            .arg(command)
            .arg(std::process::id().to_string())
            .stdout(std::process::Stdio::null())
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("callgrind_control failed: {status:?}");
        }
    }
}

/// Microseconds of `cpu` per one of `n`.
pub fn micros_per(cpu: Duration, n: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / n.max(1) as f64
}
