//! Results: one [`Report`] per scenario and transport, printed as a JSON line or a table row;
//! latency histograms; the process's peak RSS.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// The figures of one scenario run against one transport, in the key order: a
/// scenario's `#[derive(Serialize)]` figures flattened after the implementation and scenario,
/// which who ran it fills in. Figures that are not finite, or not measurable here (e.g. peak
/// RSS without `/proc`), are `null`; the others are floats rounded to 2 decimals, integers or
/// text. One JSON line is how a report crosses from a child process to its parent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    #[serde(rename = "impl")]
    pub(crate) implementation: String,
    pub(crate) scenario: String,
    #[serde(flatten)]
    pub(crate) fields: Map<String, Value>,
}

impl Report {
    /// A report of `figures`, a struct whose fields become the report's, in their order.
    pub(crate) fn of(figures: &impl Serialize) -> Self {
        Self::default().with(figures)
    }

    /// Appends the fields of `figures`, a struct, with floats rounded to 2 decimals.
    pub(crate) fn with(mut self, figures: &impl Serialize) -> Self {
        let Value::Object(fields) = serde_json::to_value(figures).expect("figures serialize")
        else {
            panic!("a report's figures are a struct");
        };
        for (key, value) in fields {
            let value = match value.as_f64() {
                Some(float) if value.is_f64() => Number::from_f64((float * 100.0).round() / 100.0)
                    .map_or(Value::Null, Value::Number),
                _ => value,
            };
            self.fields.insert(key, value);
        }
        self
    }

    /// `{"impl":"quicraft","scenario":"rtt","n":20000,...}`
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }

    /// Reads back what [`to_json`](Self::to_json) wrote.
    pub(crate) fn from_json(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }
}

/// The figures of `rtt`: sequential round trips.
#[derive(Serialize)]
pub(crate) struct Rtt {
    pub(crate) n: u64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
    pub(crate) rpcs_per_s: u64,
    /// Both nodes together, when they share this process (absent for `raw-quinn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cpu_us_per_rpc: Option<f64>,
}

/// The figures of `concurrency`: many tasks' round trips over one connection.
#[derive(Serialize)]
pub(crate) struct Concurrency {
    pub(crate) tasks: u64,
    pub(crate) rpcs_per_s: u64,
    pub(crate) p99_us: f64,
    /// As [`Rtt::cpu_us_per_rpc`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cpu_us_per_rpc: Option<f64>,
}

/// A figure as a table shows it: as in JSON, minus the quotes around text, floats with 2
/// decimals.
fn cell(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) if number.is_f64() => {
            format!("{:.2}", number.as_f64().unwrap_or(f64::NAN))
        }
        other => other.to_string(),
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
                let header: Vec<&str> = report.fields.keys().map(String::as_str).collect();
                println!();
                println!("{}", row(&report.scenario, &header, &header));
            }
            let values: Vec<String> = report.fields.values().map(cell).collect();
            let keys: Vec<&str> = report.fields.keys().map(String::as_str).collect();
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
