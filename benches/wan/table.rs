//! The rows of the WAN table: the figures of each run, their medians over `--runs`, one
//! [`Report`] per row (a JSON line or a table row), and the Markdown table of all rows.

use std::fmt::Write as _;

use serde::Serialize;

use crate::report::Report;

/// The figures of one run of one row.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    /// Idle heartbeats: median round trip, ms.
    pub(crate) idle_p50_ms: f64,
    /// Idle heartbeats: 99th percentile, ms.
    pub(crate) idle_p99_ms: f64,
    /// Heartbeats while the snapshot was in flight: median, ms.
    pub(crate) loaded_p50_ms: f64,
    /// Loaded heartbeats: 99th percentile, ms.
    pub(crate) loaded_p99_ms: f64,
    /// Loaded heartbeats: the slowest answered, ms.
    pub(crate) loaded_max_ms: f64,
    /// Loaded heartbeats answered (those the percentiles are of).
    pub(crate) loaded_n: u64,
    /// Loaded heartbeats still unanswered after the phase's grace period (not in the
    /// percentiles).
    pub(crate) loaded_lost: u64,
    /// Snapshot goodput over the loaded phase (what the follower read), Mbit/s.
    pub(crate) snapshot_mbit_s: f64,
    /// Seconds the snapshot took, or `None` when it did not complete within the cap.
    pub(crate) snapshot_s: Option<f64>,
    /// Append payload goodput over the loaded phase, Mbit/s.
    pub(crate) append_mbit_s: f64,
    /// Packets the link dropped at random, both directions, the whole run.
    pub(crate) drop_loss: u64,
    /// Packets the bottleneck queue tail-dropped, both directions, the whole run.
    pub(crate) drop_queue: u64,
}

/// One row of the table: a variant at one RTT and loss rate, measured `runs.len()` times.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The link's round-trip time, ms.
    pub(crate) rtt_ms: u64,
    /// The link's loss rate per packet and direction, percent.
    pub(crate) loss_pct: f64,
    /// The variant's name.
    pub(crate) variant: String,
    /// `quicraft` or `tcp-baseline`.
    pub(crate) implementation: &'static str,
    /// The cap of the loaded phase, s (what "not done" means).
    pub(crate) cap_s: f64,
    /// Every run's figures, in order.
    pub(crate) runs: Vec<Run>,
}

/// The figures of a row as its JSON line has them, each the median over the runs (the key
/// names of the single-configuration runs before the matrix, plus `variant`, `hb_n` and
/// `snapshot_done`).
#[derive(Serialize)]
struct Figures {
    rtt_ms: u64,
    loss_pct: f64,
    variant: String,
    idle_hb_p50_ms: f64,
    idle_hb_p99_ms: f64,
    hb_p50_ms: f64,
    hb_p99_ms: f64,
    hb_max_ms: f64,
    hb_n: u64,
    hb_lost: u64,
    snapshot_mbit_s: f64,
    /// The snapshot completed within the cap in every run.
    snapshot_done: bool,
    /// Median seconds, a run that did not complete counting as slower than all; `null` when
    /// that median run did not complete.
    snapshot_s: Option<f64>,
    append_mbit_s: f64,
    drop_loss: u64,
    drop_queue: u64,
    /// With `--runs` above 1: how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    runs: Option<usize>,
    /// With `--runs` above 1: every run's loaded heartbeat p99, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    hb_p99_runs_ms: Option<Vec<f64>>,
    /// With `--runs` above 1: every run's idle heartbeat p99, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_hb_p99_runs_ms: Option<Vec<f64>>,
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Rounded to 2 decimals, as [`Report`] rounds its top-level floats.
fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

impl Row {
    /// The median over the runs of the figure `f` picks.
    fn median(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.runs.iter().map(f).collect())
    }

    /// As [`median`](Self::median), for a count.
    fn median_count(&self, f: impl Fn(&Run) -> u64) -> u64 {
        self.median(|run| f(run) as f64).round() as u64
    }

    /// The median snapshot time, a run that did not complete counting as infinite.
    fn snapshot_s(&self) -> Option<f64> {
        let secs = self.median(|run| run.snapshot_s.unwrap_or(f64::INFINITY));
        secs.is_finite().then_some(secs)
    }

    /// Runs whose snapshot completed within the cap.
    fn snapshots_done(&self) -> usize {
        self.runs.iter().filter(|r| r.snapshot_s.is_some()).count()
    }

    /// Every run's value of `f`, rounded, when there is more than one run.
    fn per_run(&self, f: impl Fn(&Run) -> f64) -> Option<Vec<f64>> {
        (self.runs.len() > 1).then(|| self.runs.iter().map(|r| round2(f(r))).collect())
    }

    /// The row's figures: medians over its runs.
    fn figures(&self) -> Figures {
        Figures {
            rtt_ms: self.rtt_ms,
            loss_pct: self.loss_pct,
            variant: self.variant.clone(),
            idle_hb_p50_ms: self.median(|r| r.idle_p50_ms),
            idle_hb_p99_ms: self.median(|r| r.idle_p99_ms),
            hb_p50_ms: self.median(|r| r.loaded_p50_ms),
            hb_p99_ms: self.median(|r| r.loaded_p99_ms),
            hb_max_ms: self.median(|r| r.loaded_max_ms),
            hb_n: self.median_count(|r| r.loaded_n),
            hb_lost: self.median_count(|r| r.loaded_lost),
            snapshot_mbit_s: self.median(|r| r.snapshot_mbit_s),
            snapshot_done: self.snapshots_done() == self.runs.len(),
            snapshot_s: self.snapshot_s(),
            append_mbit_s: self.median(|r| r.append_mbit_s),
            drop_loss: self.median_count(|r| r.drop_loss),
            drop_queue: self.median_count(|r| r.drop_queue),
            runs: (self.runs.len() > 1).then_some(self.runs.len()),
            hb_p99_runs_ms: self.per_run(|r| r.loaded_p99_ms),
            idle_hb_p99_runs_ms: self.per_run(|r| r.idle_p99_ms),
        }
    }

    /// The row as a report: `{"impl":"quicraft","scenario":"wan","rtt_ms":50,...}`.
    pub(crate) fn report(&self) -> Report {
        Report {
            implementation: self.implementation.to_owned(),
            scenario: "wan".to_owned(),
            ..Report::of(&self.figures())
        }
    }

    /// A latency cell: the median, then with several runs each run's value.
    fn latency_cell(&self, f: impl Fn(&Run) -> f64 + Copy) -> String {
        let mut cell = format!("{:.1}", self.median(f));
        if self.runs.len() > 1 {
            let each: Vec<String> = self.runs.iter().map(|r| format!("{:.1}", f(r))).collect();
            write!(cell, " ({})", each.join(", ")).expect("writing to a String");
        }
        cell
    }

    /// The snapshot cell: its median time, or that it did not complete within the cap; with
    /// several runs, in how many it did.
    fn snapshot_cell(&self) -> String {
        let mut cell = match self.snapshot_s() {
            Some(secs) => format!("{secs:.1} s"),
            None => format!("no ({:.0} s cap)", self.cap_s),
        };
        let done = self.snapshots_done();
        if self.runs.len() > 1 && done != 0 && done != self.runs.len() {
            write!(cell, ", {done} of {} runs", self.runs.len()).expect("writing to a String");
        }
        cell
    }
}

/// The Markdown table of `rows`, header first, one line each, ready to paste.
pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut table = String::from(
        "| RTT ms | loss % | variant | idle hb p50 ms | idle hb p99 ms | loaded hb p50 ms \
         | loaded hb p99 ms | loaded hb max ms | hb unanswered | snapshot Mbit/s | snapshot done \
         | append Mbit/s | queue drops |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for row in rows {
        writeln!(
            table,
            "| {} | {} | {} | {:.1} | {} | {:.1} | {} | {:.1} | {} | {:.1} | {} | {:.1} | {} |",
            row.rtt_ms,
            row.loss_pct,
            row.variant,
            row.median(|r| r.idle_p50_ms),
            row.latency_cell(|r| r.idle_p99_ms),
            row.median(|r| r.loaded_p50_ms),
            row.latency_cell(|r| r.loaded_p99_ms),
            row.median(|r| r.loaded_max_ms),
            row.median_count(|r| r.loaded_lost),
            row.median(|r| r.snapshot_mbit_s),
            row.snapshot_cell(),
            row.median(|r| r.append_mbit_s),
            row.median_count(|r| r.drop_queue),
        )
        .expect("writing to a String");
    }
    table
}
