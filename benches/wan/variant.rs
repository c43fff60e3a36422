//! The variants of the WAN benchmark: named configurations of either implementation.
//!
//! A quicraft variant is `quicraft` followed by settings, each set explicitly on the
//! `QuicConfig`; whatever a variant does not name keeps the library's default, so plain
//! `quicraft` is the library's defaults, nothing set:
//!
//! - `hedge-off` / `hedge-auto` / `hedge-MS`: `QuicConfig::heartbeat_hedge(HeartbeatHedge::Off
//!   / Auto / After(MS ms))`;
//! - `pacing-off` / `pacing-auto` / `pacing-MBIT`: `QuicConfig::snapshot_pacing(Off / Auto /
//!   Rate(MBIT Mbit/s))`;
//! - `cubic` / `newreno` / `bbr`: `QuicTuning::congestion_controller`;
//! - `window-KB`: `QuicTuning::stream_receive_window(KB × 1000)`.
//!
//! Settings combine: `quicraft-hedge-5-pacing-off-cubic`. A TCP variant is `tcp-ALGORITHM`,
//! the baseline with that congestion control set on its sockets (`tcp-cubic`, `tcp-bbr`).

use std::fmt::Write as _;
use std::time::Duration;

use quicraft::{CongestionController, HeartbeatHedge, QuicConfig, QuicTuning, SnapshotPacing};

/// quicraft settings, each either set explicitly (`Some`) or left at the library's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct QuicSettings {
    /// `QuicConfig::heartbeat_hedge`.
    pub(crate) hedge: Option<HeartbeatHedge>,
    /// `QuicConfig::snapshot_pacing`.
    pub(crate) pacing: Option<SnapshotPacing>,
    /// `QuicTuning::congestion_controller`.
    pub(crate) controller: Option<CongestionController>,
    /// `QuicTuning::stream_receive_window`, in KB.
    pub(crate) window_kb: Option<u32>,
}

impl QuicSettings {
    /// Sets on `config` what these settings set, and nothing else. `tuning` is the tuning the
    /// caller starts from (the library's default plus what the benchmark itself needs).
    pub(crate) fn apply(&self, mut config: QuicConfig, mut tuning: QuicTuning) -> QuicConfig {
        if let Some(hedge) = self.hedge {
            config = config.heartbeat_hedge(hedge);
        }
        if let Some(pacing) = self.pacing {
            config = config.snapshot_pacing(pacing);
        }
        if let Some(controller) = self.controller {
            tuning = tuning.congestion_controller(controller);
        }
        if let Some(kb) = self.window_kb {
            tuning = tuning.stream_receive_window(kb.saturating_mul(1000));
        }
        config.tuning(tuning)
    }

    /// These settings with every setting `over` sets replaced by its.
    pub(crate) fn overlaid(self, over: &Self) -> Self {
        Self {
            hedge: over.hedge.or(self.hedge),
            pacing: over.pacing.or(self.pacing),
            controller: over.controller.or(self.controller),
            window_kb: over.window_kb.or(self.window_kb),
        }
    }

    /// The settings as name parts (`["hedge-5", "pacing-off"]`), in the order `parse` reads.
    pub(crate) fn parts(&self) -> Vec<String> {
        let mut parts = Vec::new();
        match self.hedge {
            Some(HeartbeatHedge::Off) => parts.push("hedge-off".to_owned()),
            Some(HeartbeatHedge::Auto) => parts.push("hedge-auto".to_owned()),
            Some(HeartbeatHedge::After(delay)) => {
                parts.push(format!("hedge-{}", delay.as_millis()));
            }
            Some(other) => parts.push(format!("hedge-{other:?}")),
            None => {}
        }
        if let Some(pacing) = self.pacing {
            parts.push(match pacing {
                SnapshotPacing::Off => "pacing-off".to_owned(),
                SnapshotPacing::Auto => "pacing-auto".to_owned(),
                SnapshotPacing::Rate(bytes_per_s) => {
                    format!("pacing-{}", bytes_per_s as f64 * 8.0 / 1e6)
                }
                other => format!("pacing-{other:?}"),
            });
        }
        if let Some(controller) = self.controller {
            parts.push(controller_name(controller));
        }
        if let Some(kb) = self.window_kb {
            parts.push(format!("window-{kb}"));
        }
        parts
    }

    /// What a row's note says about these settings.
    pub(crate) fn describe(&self) -> String {
        let parts = self.parts();
        if parts.is_empty() {
            "library defaults, nothing set".to_owned()
        } else {
            format!("set: {}; the rest library defaults", parts.join(", "))
        }
    }

    /// Reads settings from name parts split at `-` (`["hedge", "5", "cubic"]`).
    fn parse(mut parts: &[&str]) -> Result<Self, String> {
        let mut settings = Self::default();
        while let Some((&part, rest)) = parts.split_first() {
            parts = rest;
            let mut value = || match parts.split_first() {
                Some((&value, rest)) => {
                    parts = rest;
                    Ok(value)
                }
                None => Err(format!("`{part}` needs a value")),
            };
            match part {
                "hedge" => settings.hedge = Some(hedge(value()?)?),
                "pacing" => settings.pacing = Some(snapshot_pacing(value()?)?),
                "window" => {
                    let kb = value()?;
                    settings.window_kb = Some(
                        kb.parse()
                            .map_err(|e| format!("window {kb}: a size in KB ({e})"))?,
                    );
                }
                controller => {
                    settings.controller =
                        Some(congestion_controller(controller).map_err(|_| {
                            format!(
                                "unknown setting `{controller}` (hedge-off, hedge-auto, hedge-MS, \
                                 pacing-off, pacing-auto, pacing-MBIT, cubic, newreno, bbr, \
                                 window-KB)"
                            )
                        })?);
                }
            }
        }
        Ok(settings)
    }
}

/// The lower-case name of `controller`, as variants spell it.
fn controller_name(controller: CongestionController) -> String {
    match controller {
        CongestionController::Cubic => "cubic".to_owned(),
        CongestionController::NewReno => "newreno".to_owned(),
        CongestionController::Bbr => "bbr".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// What a variant runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Setup {
    /// quicraft with these settings.
    Quic(QuicSettings),
    /// The TCP + TLS baseline with this congestion control (a Linux algorithm name).
    Tcp(String),
}

/// A named configuration: one row of the table per RTT and loss.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Variant {
    /// The name the table shows.
    pub(crate) name: String,
    /// What it runs.
    pub(crate) setup: Setup,
}

impl Variant {
    /// Reads a variant name (see the module documentation).
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        let parts: Vec<&str> = name.split('-').collect();
        let setup = match parts.as_slice() {
            ["quicraft", settings @ ..] => {
                Setup::Quic(QuicSettings::parse(settings).map_err(|e| format!("{name}: {e}"))?)
            }
            ["tcp", algorithm] if !algorithm.is_empty() => Setup::Tcp((*algorithm).to_owned()),
            _ => {
                return Err(format!(
                    "{name}: quicraft[-hedge-off|-hedge-auto|-hedge-MS][-pacing-off|-pacing-auto|\
                     -pacing-MBIT][-cubic|-newreno|-bbr][-window-KB], or tcp-ALGORITHM"
                ));
            }
        };
        Ok(Self {
            name: name.to_owned(),
            setup,
        })
    }

    /// This variant with `overrides` applied if it is a quicraft one; its name then lists
    /// them after a `+` each (`quicraft-hedge-off+hedge-5`).
    pub(crate) fn overridden(mut self, overrides: &QuicSettings) -> Self {
        if let Setup::Quic(settings) = &mut self.setup {
            *settings = settings.overlaid(overrides);
            for part in overrides.parts() {
                write!(self.name, "+{part}").expect("writing to a String");
            }
        }
        self
    }

    /// The implementation, as the report's `impl` field names it.
    pub(crate) fn implementation(&self) -> &'static str {
        match self.setup {
            Setup::Quic(_) => "quicraft",
            Setup::Tcp(_) => "tcp-baseline",
        }
    }
}

/// A heartbeat hedge setting (a newtype, so that clap reads `--heartbeat-hedge` as a flag that
/// needs a value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Hedge(pub(crate) HeartbeatHedge);

/// `off`, `auto`, or a delay in milliseconds (`--heartbeat-hedge`).
pub(crate) fn hedge_flag(value: &str) -> Result<Hedge, String> {
    hedge(value).map(Hedge)
}

/// `off`, `auto`, or a delay in milliseconds (variants' `hedge-`).
pub(crate) fn hedge(value: &str) -> Result<HeartbeatHedge, String> {
    match value {
        "off" => Ok(HeartbeatHedge::Off),
        "auto" => Ok(HeartbeatHedge::Auto),
        ms => ms
            .parse::<u64>()
            .map(|ms| HeartbeatHedge::After(Duration::from_millis(ms)))
            .map_err(|e| format!("hedge {ms}: off, auto or milliseconds ({e})")),
    }
}

/// `off`, `auto`, or a rate in Mbit/s (`--snapshot-pacing`, variants' `pacing-`).
pub(crate) fn snapshot_pacing(value: &str) -> Result<SnapshotPacing, String> {
    match value {
        "off" => Ok(SnapshotPacing::Off),
        "auto" => Ok(SnapshotPacing::Auto),
        mbit => match mbit.parse::<f64>() {
            Ok(mbit) if mbit.is_finite() && mbit > 0.0 => {
                Ok(SnapshotPacing::Rate((mbit * 1e6 / 8.0) as u64))
            }
            Ok(_) => Err(format!("pacing {mbit}: a rate above 0 Mbit/s")),
            Err(e) => Err(format!("pacing {mbit}: off, auto or Mbit/s ({e})")),
        },
    }
}

/// `cubic`, `newreno` or `bbr` (`--quic-cc`, variants' controller part).
pub(crate) fn congestion_controller(name: &str) -> Result<CongestionController, String> {
    match name {
        "cubic" => Ok(CongestionController::Cubic),
        "newreno" => Ok(CongestionController::NewReno),
        "bbr" => Ok(CongestionController::Bbr),
        other => Err(format!("{other}: cubic, newreno or bbr")),
    }
}
