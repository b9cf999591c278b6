//! stevedore-bench: the benchmark suite (issue 6, BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --bin stevedore-bench -- all            # every scenario
//! cargo run --release --bin stevedore-bench -- publish unary  # some of them
//! cargo run --release --bin stevedore-bench -- all --write    # and update BENCHMARKS.md
//! cargo run --bin stevedore-bench -- quick                    # smoke test: small sizes, one run
//! ```
//!
//! Each scenario starts the broker in this process with `stevedore::run`
//! on `127.0.0.1:0` and a fresh temporary data directory (the `memory`
//! scenario runs it in a child process to read its RSS alone), drives it
//! with tonic clients and local hyper webhook receivers, and measures the
//! scenario's baseline in the same invocation, its runs interleaved with
//! the broker's, because the machines are shared and noisy.
//!
//! Layout: `harness` (brokers, the event, helpers), `receiver` (the
//! webhook receiver), `report` (figures, table, BENCHMARKS.md), and one
//! file per group of scenarios: `publish`, `unary`, `latency`, `delivery`,
//! `scale`.

#![forbid(unsafe_code)]

mod cluster;
mod cluster_delivery;
mod cpu;
mod delivery;
mod harness;
mod latency;
mod nats;
mod publish;
mod receiver;
mod report;
mod scale;
mod unary;

use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Result};
use clap::Parser;
use tokio::sync::OnceCell;

use report::Section;

/// The same allocator as the `stevedore` binary, so the in-process broker
/// is measured as it runs there (the baselines use it too).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Every scenario, in the order `all` runs them.
const SCENARIOS: &[(&str, &str)] = &[
    (
        "publish",
        "durable PublishBatch / PublishStream vs a raw append + fdatasync loop (and JetStream with NATS_SERVER_BIN)",
    ),
    (
        "unary",
        "unary Publish, 64 callers, vs a no-op tonic server",
    ),
    (
        "zerofill",
        "unary Publish with the log's zero-filler on vs off (A/B)",
    ),
    (
        "latency",
        "publish call start → webhook received, 1,000 events/s; per-run tails, stall log",
    ),
    (
        "deliveries",
        "deliveries/s to one receiver vs a raw hyper client",
    ),
    (
        "fanout",
        "deliveries/s to 10 endpoints; connections per endpoint",
    ),
    (
        "isolation",
        "healthy endpoints' p99 with 2 of 10 timing out",
    ),
    ("catchup", "Subscribe from earliest over a prefilled log"),
    ("memory", "RSS with 1 M events and 1,000 endpoints"),
    (
        "restart",
        "restart with 1 M events and 100 k pending deliveries",
    ),
];

/// Scenarios run only when named (not by `all`): they need an outside
/// program.
const EXTRA_SCENARIOS: &[(&str, &str)] = &[(
    "cluster",
    "cluster mode: publish through 1 and 2 brokers on 3 JetStream nodes vs a raw R3 publish, deliveries and CPU per delivery vs embedded (needs NATS_SERVER_BIN)",
)];

#[derive(Parser)]
#[command(
    name = "stevedore-bench",
    about = "The stevedore benchmark suite: prints a table of figures, baselines and targets.",
    after_help = scenario_help()
)]
struct Args {
    /// Scenarios to run: `all`, `quick` (= all --quick), or names (see below).
    #[arg(required = true)]
    scenarios: Vec<String>,
    /// Small sizes and one run each: a smoke test of this program, not a
    /// measurement.
    #[arg(long)]
    quick: bool,
    /// Runs per figure (default: 5, or 3 for the expensive scenarios).
    #[arg(long)]
    runs: Option<usize>,
    /// Update the scenarios' sections of this file (default BENCHMARKS.md).
    #[arg(long, num_args = 0..=1, default_missing_value = "BENCHMARKS.md")]
    write: Option<PathBuf>,
    /// Keep the large data directory of `memory` and `restart` here, and
    /// reuse it if it is already there (it takes a minute or two to build).
    #[arg(long)]
    dataset_dir: Option<PathBuf>,
    /// Internal: serve a broker on this data directory until stdin closes.
    #[arg(long, hide = true)]
    data_dir: Option<PathBuf>,
    /// Internal: a config key of that broker, `KEY=VALUE` (repeatable).
    #[arg(long = "set", hide = true)]
    settings: Vec<String>,
}

fn scenario_help() -> String {
    let mut s = String::from("Scenarios:\n");
    for (name, what) in SCENARIOS {
        s.push_str(&format!("  {name:<11} {what}\n"));
    }
    s.push_str("Not run by `all`:\n");
    for (name, what) in EXTRA_SCENARIOS {
        s.push_str(&format!("  {name:<11} {what}\n"));
    }
    s
}

/// What scenarios share: sizes and the large data directory.
pub struct Ctx {
    pub quick: bool,
    runs: Option<usize>,
    dataset_dir: Option<PathBuf>,
    dataset: OnceCell<scale::Dataset>,
    started: Instant,
}

impl Ctx {
    /// Runs for a figure whose full-size default is `default`.
    pub fn runs(&self, default: usize) -> usize {
        self.runs
            .unwrap_or(if self.quick { 1 } else { default })
            .max(1)
    }

    /// A progress line on stderr.
    pub fn progress(&self, msg: &str) {
        eprintln!("[{:>6.1}s] {msg}", self.started.elapsed().as_secs_f64());
    }

    /// The large data directory, built on first use.
    pub async fn dataset(&self) -> Result<&scale::Dataset> {
        self.dataset
            .get_or_try_init(|| scale::Dataset::build(self))
            .await
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.scenarios.first().map(String::as_str) == Some("__serve") {
        let dir = args
            .data_dir
            .ok_or_else(|| anyhow::anyhow!("__serve needs --data-dir"))?;
        let settings = args
            .settings
            .iter()
            .map(|s| {
                s.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| anyhow::anyhow!("--set wants KEY=VALUE, got {s:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        return harness::serve_child(dir, &settings).await;
    }
    let mut quick = args.quick;
    let mut names: Vec<&str> = Vec::new();
    for s in &args.scenarios {
        match s.as_str() {
            "all" => names.extend(SCENARIOS.iter().map(|(n, _)| *n)),
            "quick" => {
                quick = true;
                names.extend(SCENARIOS.iter().map(|(n, _)| *n));
            }
            n if SCENARIOS
                .iter()
                .chain(EXTRA_SCENARIOS)
                .any(|(s, _)| *s == n) =>
            {
                names.push(n)
            }
            other => bail!("unknown scenario {other:?}\n\n{}", scenario_help()),
        }
    }
    names.dedup();
    if quick && args.write.is_some() {
        bail!("--quick figures are a smoke test; they are not written to BENCHMARKS.md");
    }
    let ctx = Ctx {
        quick,
        runs: args.runs,
        dataset_dir: args.dataset_dir.clone(),
        dataset: OnceCell::new(),
        started: Instant::now(),
    };
    let machine = machine();
    eprintln!("{machine}");
    let (encoded, body) = harness::event_sizes();
    eprintln!("benchmark event: {encoded} bytes encoded, {body} bytes of webhook JSON\n");

    let mut sections: Vec<Section> = Vec::new();
    let mut failed = Vec::new();
    for name in names {
        ctx.progress(&format!("== {name}"));
        let result = match name {
            "publish" => publish::publish(&ctx).await,
            "unary" => unary::unary(&ctx).await,
            "zerofill" => unary::zerofill(&ctx).await,
            "latency" => latency::latency(&ctx).await,
            "deliveries" => delivery::deliveries(&ctx).await,
            "fanout" => delivery::fanout(&ctx).await,
            "isolation" => delivery::isolation(&ctx).await,
            "catchup" => scale::catchup(&ctx).await,
            "memory" => scale::memory(&ctx).await,
            "restart" => scale::restart(&ctx).await,
            "cluster" => cluster::cluster(&ctx).await,
            _ => unreachable!("names are checked above"),
        };
        match result {
            Ok(section) => {
                println!("{}\n{}", section.title, report::text_table(&[&section]));
                sections.push(section);
            }
            Err(e) => {
                eprintln!("scenario {name} failed: {e:#}");
                failed.push(name);
            }
        }
    }

    println!(
        "\n{}",
        if quick {
            "QUICK RUN (smoke test, not a measurement)"
        } else {
            "Results"
        }
    );
    println!(
        "{}",
        report::text_table(&sections.iter().collect::<Vec<_>>())
    );
    let misses: Vec<String> = sections
        .iter()
        .flat_map(|s| {
            s.figures
                .iter()
                .filter(|f| f.pass() == Some(false))
                .map(move |f| format!("{}: {}", s.name, f.name))
        })
        .collect();
    println!(
        "{} figures, {} with a target missed{}",
        sections.iter().map(|s| s.figures.len()).sum::<usize>(),
        misses.len(),
        if misses.is_empty() {
            String::new()
        } else {
            format!(": {}", misses.join("; "))
        }
    );
    println!("total time {:.0} s", ctx.started.elapsed().as_secs_f64());

    if let Some(path) = &args.write {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        report::update_file(path, "machine", &format!("```text\n{machine}\n```\n"))?;
        let of_all: Vec<&Section> = sections
            .iter()
            .filter(|s| SCENARIOS.iter().any(|(n, _)| *n == s.name))
            .collect();
        if of_all.len() == SCENARIOS.len() {
            let refs = of_all;
            report::update_file(
                path,
                "summary",
                &format!(
                    "{}\nAll scenarios, measured {date}; total time {:.0} s.\n",
                    report::markdown_table(&refs),
                    ctx.started.elapsed().as_secs_f64()
                ),
            )?;
        }
        for s in &sections {
            report::update_file(path, s.name, &report::markdown(s, &date))?;
        }
        eprintln!("updated {}", path.display());
    }
    if !failed.is_empty() {
        bail!("scenario(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// nproc, memory, CPU model, kernel, rustc, date and load.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".into(), |s| s.trim().to_owned());
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .map_or(String::new(), |s| format!(" @ {} MHz", s.trim()));
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "nproc {nproc}; memory {:.1} GiB; CPU {cpu}{mhz}; kernel {}; {rustc}; {}; load average at start {}",
        mem_kib as f64 / (1024.0 * 1024.0),
        read("/proc/sys/kernel/osrelease").trim(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}
