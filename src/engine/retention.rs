//! The WAL-retention guard: how much WAL a sink's slot may hold back, and what
//! happens to a sink whose slot holds more (a paused, failed or slow sink must
//! never fill pg_wal and stop the primary).
//!
//! The limit is the sink's `max_retained_wal` option, else the setting
//! `pg_sink.max_retained_wal` (empty: no limit). Sizes are written as Postgres'
//! `pg_size_bytes` reads them: `1073741824`, `512MB`, `1 GB`. The policy
//! (`wal_retention_policy`) says what to do past the limit:
//!
//! * `pause` (default): keep the slot, pause the sink and say why in its status;
//!   nothing is lost, WAL keeps growing until someone acts.
//! * `fail`: drop the slot (the WAL is freed), fail the sink; `sink.resync`
//!   delivers the source again from a new snapshot.
//! * `resnapshot`: drop the slot and deliver the source again from a new
//!   snapshot at once.

use super::error::{Result, SinkError};

/// What to do with a sink whose slot holds more WAL than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    Pause,
    Fail,
    Resnapshot,
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy> {
        match text.trim().to_ascii_lowercase().as_str() {
            "pause" => Ok(Policy::Pause),
            "fail" => Ok(Policy::Fail),
            "resnapshot" => Ok(Policy::Resnapshot),
            other => Err(SinkError::config(format!("invalid value for option \"wal_retention_policy\": \"{other}\"")).hint(
                "Use pause (keep the slot, pause the sink), fail (drop the slot, fail the sink) or resnapshot (drop the slot, snapshot again).",
            )),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Policy::Pause => "pause",
            Policy::Fail => "fail",
            Policy::Resnapshot => "resnapshot",
        }
    }
}

/// A size as `pg_size_bytes` reads it: a whole number of bytes, or a number and
/// one of `bytes`, `B`, `kB`, `MB`, `GB`, `TB`, `PB` (units of 1024, any case,
/// space allowed). `None`: not a size.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim().to_ascii_lowercase());
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.as_str() {
        "" | "b" | "bytes" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        "pb" => 1 << 50,
        _ => return None,
    };
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let bytes = n * mult as f64;
    (bytes <= u64::MAX as f64).then_some(bytes as u64)
}

/// The `max_retained_wal` option, checked.
pub fn parse_limit(text: &str) -> Result<u64> {
    match parse_size(text) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(SinkError::config(format!("invalid value for option \"max_retained_wal\": \"{text}\""))
            .detail("It is the most WAL the sink's slot may hold back.")
            .hint("Give a size such as '10GB', '512MB' or a number of bytes.")),
    }
}

/// What the guard does with one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Within the limit, or nothing left to do.
    Keep,
    /// Pause the sink (keeping its slot).
    Pause,
    /// Drop the slot and fail the sink.
    DropAndFail,
    /// Drop the slot and take a new snapshot.
    DropAndResnapshot,
}

/// The guard's rule. `paused`: the sink is already paused (a paused sink under
/// the `pause` policy has nothing more to do); `failed` likewise for `fail`.
/// One reading of a sink's slot by the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    /// WAL the slot holds back: from its `restart_lsn` to the current position.
    pub retained: u64,
    /// How far the sink is behind: from its confirmed position to the current one.
    pub lag: u64,
    /// The lag at the guard's previous reading, if the sink ran then as now.
    pub previous_lag: Option<u64>,
    /// The sink is taking its initial snapshot (nothing confirmed yet).
    pub initializing: bool,
}

impl Reading {
    /// Whether the sink itself holds the WAL. A slot also holds WAL while a
    /// transaction that began before its position is still open (decoding must
    /// start at that transaction), and while a new slot waits for running
    /// transactions or its snapshot is copied: dropping it would free nothing
    /// that a new slot would not hold again. So a sink is held responsible when it
    /// is behind by more than the limit itself and is not catching up: it is
    /// paused or failed, or its lag did not shrink since the guard's previous
    /// reading (a sink just resumed gets one round to show it is catching up).
    fn responsible(&self, limit: u64, stopped: bool) -> bool {
        if self.initializing && !stopped {
            return false;
        }
        self.lag > limit && (stopped || self.previous_lag.is_some_and(|before| self.lag >= before))
    }
}

pub fn decide(r: Reading, limit: Option<u64>, policy: Policy, paused: bool, failed: bool) -> Action {
    match limit {
        Some(l) if r.retained > l && r.responsible(l, paused || failed) => match policy {
            Policy::Pause if paused || failed => Action::Keep,
            Policy::Pause => Action::Pause,
            Policy::Fail => Action::DropAndFail,
            Policy::Resnapshot => Action::DropAndResnapshot,
        },
        _ => Action::Keep,
    }
}

/// The status line of a sink the guard acted on.
pub fn message(action: Action, retained: u64, limit: u64) -> String {
    let what = match action {
        Action::Pause => "the sink was paused; its slot is kept",
        Action::DropAndFail => "its slot was dropped to free the WAL; the changes it held are lost to this sink",
        Action::DropAndResnapshot => "its slot was dropped to free the WAL; the source is delivered again from a new snapshot",
        Action::Keep => "nothing was done",
    };
    format!("the sink's slot held {retained} bytes of WAL, more than max_retained_wal ({limit} bytes): {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_pg_size_bytes_reads_them() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("512MB"), Some(512 << 20));
        assert_eq!(parse_size("1 GB"), Some(1 << 30));
        assert_eq!(parse_size("1.5kB"), Some(1536));
        assert_eq!(parse_size("10 bytes"), Some(10));
        assert_eq!(parse_size("2tb"), Some(2 << 40));
        for bad in ["", "MB", "-1MB", "1 XB", "ten", "1e3"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("1 parsec").unwrap_err().hint.unwrap().contains("512MB"));
    }

    #[test]
    fn the_policy_applies_past_the_limit_only() {
        let l = Some(1000);
        // A stuck sink: as far behind as its slot holds, no less than before.
        let stuck = |n| Reading { retained: n, lag: n, previous_lag: Some(n), initializing: false };
        assert_eq!(decide(stuck(1000), l, Policy::Fail, false, false), Action::Keep, "at the limit");
        assert_eq!(decide(stuck(5000), None, Policy::Fail, false, false), Action::Keep, "no limit");
        assert_eq!(decide(stuck(1001), l, Policy::Pause, false, false), Action::Pause);
        assert_eq!(decide(stuck(1001), l, Policy::Pause, true, false), Action::Keep, "already paused");
        assert_eq!(decide(stuck(1001), l, Policy::Pause, false, true), Action::Keep, "failed sinks keep their slot under pause");
        assert_eq!(decide(stuck(1001), l, Policy::Fail, true, false), Action::DropAndFail, "a paused sink's slot is dropped too");
        assert_eq!(decide(stuck(1001), l, Policy::Resnapshot, false, true), Action::DropAndResnapshot);
        assert!(Policy::parse("Resnapshot").is_ok() && Policy::parse("drop").is_err());
        assert!(message(Action::DropAndFail, 2000, 1000).contains("max_retained_wal (1000 bytes)"));
    }

    #[test]
    fn only_a_sink_that_is_itself_behind_and_not_catching_up_is_acted_on() {
        let l = Some(1000);
        let r = |lag, previous_lag| Reading { retained: 9000, lag, previous_lag, initializing: false };
        // A slot held back by another transaction still open: the sink keeps up.
        assert_eq!(decide(r(10, Some(10)), l, Policy::Resnapshot, false, false), Action::Keep);
        // Behind, but catching up since the last reading (a sink just resumed).
        assert_eq!(decide(r(5000, Some(6000)), l, Policy::Pause, false, false), Action::Keep);
        // The first reading since it runs: one round to show it catches up.
        assert_eq!(decide(r(5000, None), l, Policy::Fail, false, false), Action::Keep);
        // Falling further behind, or not moving: the policy applies.
        assert_eq!(decide(r(5000, Some(4000)), l, Policy::Fail, false, false), Action::DropAndFail);
        assert_eq!(decide(r(5000, Some(5000)), l, Policy::Pause, false, false), Action::Pause);
        // A paused sink does not catch up: no second reading is needed.
        assert_eq!(decide(r(5000, None), l, Policy::Fail, true, false), Action::DropAndFail);
        // A slot whose snapshot is being copied is left alone while the sink runs.
        let init = Reading { retained: 9000, lag: 9000, previous_lag: Some(9000), initializing: true };
        assert_eq!(decide(init, l, Policy::Resnapshot, false, false), Action::Keep);
    }
}
