//! Figures, targets, the printed table, and the sections of BENCHMARKS.md.
//!
//! Every figure is measured in several runs; the table shows the median,
//! the min and max, the baseline's median from the same invocation (its
//! runs interleaved with the broker's), the ratio of the medians, and the
//! target with pass or miss.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};

/// How a figure's values read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unit {
    /// Events, calls or deliveries per second.
    PerSec,
    /// Milliseconds (latency).
    Millis,
    /// Seconds.
    Secs,
    /// Mebibytes (values are bytes).
    MiB,
    /// A plain count.
    Count,
    /// Microseconds (CPU time per request).
    Micros,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        if v.is_nan() {
            return "—".into();
        }
        match self {
            Unit::PerSec => format!("{}/s", thousands(v.round() as u64)),
            Unit::Millis => {
                if v < 10.0 {
                    format!("{v:.2} ms")
                } else {
                    format!("{v:.1} ms")
                }
            }
            Unit::Secs => format!("{v:.2} s"),
            Unit::MiB => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
            Unit::Count => thousands(v.round() as u64),
            Unit::Micros => format!("{v:.1} µs"),
        }
    }
}

/// `12,345,678`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One bound of a target.
#[derive(Clone, Debug)]
pub enum Check {
    /// The median is at most this.
    AtMost(f64),
    /// median / baseline median is at least this.
    RatioAtLeast(f64),
    /// median / baseline median is at most this.
    RatioAtMost(f64),
    /// Every run's value is at most this (a tail that must hold in each
    /// run, not only in the median of runs).
    EveryRunAtMost(f64),
}

/// A measured figure.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub unit: Unit,
    /// One value per run.
    pub values: Vec<f64>,
    /// What the baseline is, and one value per run.
    pub baseline: Option<(String, Vec<f64>)>,
    /// Every check must pass (none: reported only).
    pub target: Vec<Check>,
}

impl Figure {
    pub fn new(name: impl Into<String>, unit: Unit, values: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            unit,
            values,
            baseline: None,
            target: Vec::new(),
        }
    }

    pub fn baseline(mut self, what: impl Into<String>, values: Vec<f64>) -> Self {
        self.baseline = Some((what.into(), values));
        self
    }

    pub fn target(mut self, check: Check) -> Self {
        self.target.push(check);
        self
    }

    pub fn median(&self) -> f64 {
        median(&self.values)
    }

    fn base_median(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, v)| median(v))
    }

    pub fn ratio(&self) -> Option<f64> {
        self.base_median().map(|b| self.median() / b)
    }

    /// `None` when there is no target.
    pub fn pass(&self) -> Option<bool> {
        if self.target.is_empty() {
            return None;
        }
        let m = self.median();
        let r = self.ratio().unwrap_or(f64::NAN);
        Some(self.target.iter().all(|c| match *c {
            Check::AtMost(x) => m <= x,
            Check::RatioAtLeast(x) => r >= x,
            Check::RatioAtMost(x) => r <= x,
            Check::EveryRunAtMost(x) => {
                !self.values.is_empty() && self.values.iter().all(|v| *v <= x)
            }
        }))
    }

    /// Every run's value in run order, and the baseline's:
    /// `name: a, b, c (baseline: x, y, z)`.
    pub fn each_run(&self) -> String {
        let list = |values: &[f64]| {
            let v: Vec<String> = values.iter().map(|v| self.unit.format(*v)).collect();
            v.join(", ")
        };
        match &self.baseline {
            Some((what, v)) => format!(
                "{}: {} ({what}: {})",
                self.name,
                list(&self.values),
                list(v)
            ),
            None => format!("{}: {}", self.name, list(&self.values)),
        }
    }

    fn target_text(&self) -> String {
        let parts: Vec<String> = self
            .target
            .iter()
            .map(|c| match *c {
                Check::AtMost(x) => format!("≤ {}", self.unit.format(x)),
                Check::RatioAtLeast(x) => format!("≥ {:.0} % of baseline", x * 100.0),
                Check::RatioAtMost(x) => format!("≤ {x:.1}× baseline"),
                Check::EveryRunAtMost(x) => format!("≤ {} in every run", self.unit.format(x)),
            })
            .collect();
        if parts.is_empty() {
            "—".into()
        } else {
            parts.join(", ")
        }
    }

    fn row(&self) -> [String; 7] {
        let min = self.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self
            .values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let baseline = match &self.baseline {
            Some((what, v)) => format!("{} ({what})", self.unit.format(median(v))),
            None => "—".into(),
        };
        let ratio = self
            .ratio()
            .map_or("—".into(), |r| format!("{:.0} %", r * 100.0));
        let result = match self.pass() {
            None => "—",
            Some(true) => "pass",
            Some(false) => "MISS",
        };
        [
            self.name.clone(),
            self.unit.format(self.median()),
            format!("{} – {}", self.unit.format(min), self.unit.format(max)),
            baseline,
            ratio,
            self.target_text(),
            result.into(),
        ]
    }
}

/// The median (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One scenario's results.
pub struct Section {
    /// The scenario's name on the command line (and its BENCHMARKS.md marker).
    pub name: &'static str,
    pub title: &'static str,
    pub runs: usize,
    pub figures: Vec<Figure>,
    /// How it was measured (sizes, settings), one line each.
    pub notes: Vec<String>,
}

const HEADER: [&str; 7] = [
    "figure",
    "median",
    "min – max",
    "baseline",
    "ratio",
    "target",
    "result",
];

/// The plain-text table of `sections`, for the terminal.
pub fn text_table(sections: &[&Section]) -> String {
    let mut rows: Vec<[String; 7]> = vec![HEADER.map(String::from)];
    for s in sections {
        for f in &s.figures {
            let mut r = f.row();
            r[0] = format!("{}: {}", s.name, r[0]);
            rows.push(r);
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}", w = *w))
            .collect();
        let _ = writeln!(out, "{}", cells.join(" | ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "{}", rule.join("-|-"));
        }
    }
    out
}

/// The Markdown table of `sections`' figures.
pub fn markdown_table(sections: &[&Section]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADER.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(HEADER.len()));
    for s in sections {
        for f in &s.figures {
            let mut r = f.row();
            if sections.len() > 1 {
                r[0] = format!("{}: {}", s.name, r[0]);
            }
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
    }
    out
}

/// A scenario's block for BENCHMARKS.md.
pub fn markdown(s: &Section, date: &str) -> String {
    let mut out = markdown_table(&[s]);
    let _ = writeln!(out);
    let _ = writeln!(out, "{} run(s), measured {date}.", s.runs);
    for n in &s.notes {
        let _ = writeln!(out, "- {n}");
    }
    out
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- bench:{name}:begin -->"),
        format!("<!-- bench:{name}:end -->"),
    )
}

/// Replaces the block between `name`'s markers in `path` with `body`; a
/// block that has no markers yet is appended at the end.
pub fn update_file(path: &Path, name: &str, body: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (begin, end) = markers(name);
    let block = format!("{begin}\n{}{end}", body);
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{block}{}", &text[..b], &text[e + end.len()..])
        }
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_at_most_fails_on_one_slow_run_that_the_median_hides() {
        let tail = |values: Vec<f64>| Figure::new("p99", Unit::Millis, values);
        let median_only = tail(vec![1.0, 1.0, 30.0]).target(Check::AtMost(2.0));
        assert_eq!(median_only.pass(), Some(true));
        let every_run = tail(vec![1.0, 1.0, 30.0]).target(Check::EveryRunAtMost(2.0));
        assert_eq!(every_run.pass(), Some(false));
        let all_fast = tail(vec![1.0, 2.0, 1.5]).target(Check::EveryRunAtMost(2.0));
        assert_eq!(all_fast.pass(), Some(true));
        assert_eq!(all_fast.row()[5], "≤ 2.00 ms in every run");
        let no_runs = tail(Vec::new()).target(Check::EveryRunAtMost(2.0));
        assert_eq!(no_runs.pass(), Some(false));
    }

    #[test]
    fn each_run_lists_every_value_in_run_order_with_the_baselines() {
        let f = Figure::new("CPU per delivery", Unit::Micros, vec![50.0, 40.25, 61.0])
            .baseline("embedded", vec![20.0, 21.0, 19.5]);
        assert_eq!(
            f.each_run(),
            "CPU per delivery: 50.0 µs, 40.2 µs, 61.0 µs (embedded: 20.0 µs, 21.0 µs, 19.5 µs)"
        );
        let g = Figure::new("rate", Unit::PerSec, vec![1234.0, 999.6]);
        assert_eq!(g.each_run(), "rate: 1,234/s, 1,000/s");
    }

    #[test]
    fn ratio_targets_compare_medians_of_the_same_run() {
        let f = Figure::new("rate", Unit::PerSec, vec![70.0, 80.0, 90.0])
            .baseline("raw", vec![100.0, 100.0, 100.0])
            .target(Check::RatioAtLeast(0.7));
        assert_eq!(f.pass(), Some(true));
        let f = f.target(Check::RatioAtLeast(0.9));
        assert_eq!(f.pass(), Some(false));
    }
}
