//! Results: one [`Report`] per scenario and transport, printed as a JSON line or a table row;
//! latency histograms; the process's peak RSS.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// A figure of a report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Int(u64),
    Float(f64),
    Text(String),
    /// Not measurable here (e.g. peak RSS without `/proc`); `null` in JSON.
    Missing,
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Self::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        if v.is_finite() {
            Self::Float(v)
        } else {
            Self::Missing
        }
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Missing, Into::into)
    }
}

impl fmt::Display for Value {
    /// As in JSON, minus the quotes around text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(v) => write!(f, "{v}"),
            Self::Float(v) => write!(f, "{v:.2}"),
            Self::Text(v) => f.write_str(v),
            Self::Missing => f.write_str("null"),
        }
    }
}

/// The figures of one scenario run against one transport, in the issue's key order. A
/// scenario fills in the figures; who ran it fills in the implementation and scenario.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Report {
    pub(crate) implementation: String,
    pub(crate) scenario: String,
    pub(crate) fields: Vec<(String, Value)>,
}

impl Report {
    /// Appends the figure `key`.
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.push((key.to_owned(), value.into()));
        self
    }

    /// `{"impl":"quicraft","scenario":"rtt","n":20000,...}`
    pub(crate) fn to_json(&self) -> String {
        let mut out = format!(
            r#"{{"impl":"{}","scenario":"{}""#,
            self.implementation, self.scenario
        );
        for (key, value) in &self.fields {
            match value {
                Value::Text(text) => write!(out, r#","{key}":"{text}""#),
                other => write!(out, r#","{key}":{other}"#),
            }
            .expect("writing to a String");
        }
        out.push('}');
        out
    }

    /// Reads back what [`to_json`](Self::to_json) wrote (flat, with no commas, colons or
    /// quotes inside strings): how a report crosses from a child process to its parent.
    pub(crate) fn from_json(line: &str) -> Option<Self> {
        let body = line.trim().strip_prefix('{')?.strip_suffix('}')?;
        let mut report = Self::default();
        for pair in body.split(',') {
            let (key, value) = pair.split_once(':')?;
            let key = key.trim().trim_matches('"');
            let value = value.trim();
            let value = if let Some(text) = value.strip_prefix('"') {
                Value::Text(text.strip_suffix('"')?.to_owned())
            } else if value == "null" {
                Value::Missing
            } else if let Ok(int) = value.parse() {
                Value::Int(int)
            } else {
                Value::Float(value.parse().ok()?)
            };
            match (key, value) {
                ("impl", Value::Text(text)) => report.implementation = text,
                ("scenario", Value::Text(text)) => report.scenario = text,
                (key, value) => report.fields.push((key.to_owned(), value)),
            }
        }
        Some(report)
    }
}

/// Prints reports as they come: JSON lines, or a table with a header per scenario.
pub(crate) struct Printer {
    json: bool,
    /// The scenario whose header the table printed last.
    current: Option<String>,
}

impl Printer {
    pub(crate) fn new(json: bool) -> Self {
        Self {
            json,
            current: None,
        }
    }

    /// A line about the run: part of the table, on stderr beside JSON.
    pub(crate) fn note(&self, text: &str) {
        if self.json {
            eprintln!("# {text}");
        } else {
            println!("# {text}");
        }
    }

    pub(crate) fn print(&mut self, report: &Report) {
        if self.json {
            println!("{}", report.to_json());
        } else {
            if self.current.as_deref() != Some(report.scenario.as_str()) {
                self.current = Some(report.scenario.clone());
                let header: Vec<&str> = report.fields.iter().map(|(k, _)| k.as_str()).collect();
                println!();
                println!("{}", row(&report.scenario, &header, &header));
            }
            let values: Vec<String> = report.fields.iter().map(|(_, v)| v.to_string()).collect();
            let keys: Vec<&str> = report.fields.iter().map(|(k, _)| k.as_str()).collect();
            println!(
                "{}",
                row(&format!("  {}", report.implementation), &keys, &values)
            );
        }
        // Show progress while the next scenario runs, even when stdout is a pipe.
        let _ = std::io::stdout().flush();
    }
}

/// A table row: `first`, then each cell right-aligned to the width of its column's key.
fn row(first: &str, keys: &[&str], cells: &[impl AsRef<str>]) -> String {
    let mut line = format!("{first:<13}");
    for (key, cell) in keys.iter().zip(cells) {
        let width = key.len().max(10);
        write!(line, "  {:>width$}", cell.as_ref()).expect("writing to a String");
    }
    line
}

/// A histogram of latencies, recorded in nanoseconds (reported in microseconds), from 1 ns to
/// a minute at 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    histogram.saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
}

/// The latency at `quantile`, in microseconds.
pub(crate) fn quantile_us(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// The largest latency, in microseconds.
pub(crate) fn max_us(histogram: &Histogram<u64>) -> f64 {
    histogram.max() as f64 / 1000.0
}

/// `count` events in `elapsed`, per second.
pub(crate) fn per_second(count: u64, elapsed: Duration) -> u64 {
    (count as f64 / elapsed.as_secs_f64()).round() as u64
}

/// `bytes` in `elapsed`, in MB/s (10^6 bytes per MB).
pub(crate) fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

/// This process's peak resident set size in KiB (`VmHWM` of `/proc/self/status`), on Linux.
pub(crate) fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) this process has used so far, all threads.
pub(crate) fn process_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return Duration::ZERO;
    };
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    micros(usage.user_time()) + micros(usage.system_time())
}

/// CPU microseconds per operation over a span that used `cpu` for `ops` operations.
pub(crate) fn cpu_us_per(cpu: Duration, ops: u64) -> f64 {
    if ops == 0 {
        return f64::NAN;
    }
    cpu.as_secs_f64() * 1e6 / ops as f64
}
