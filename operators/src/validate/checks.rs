//! The checks themselves: pure functions of the rules, the sensor's state and the reading.

use std::fmt;

use millstream_events::time::{format_rfc3339_millis, MAX_EVENT_TIME};
use millstream_events::{EventTime, Reading, Reason, Rejection};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::registry::{Action, SensorRules};

/// Quality flags of a kept reading: a small set, stored in one byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QualityFlags(u8);

impl QualityFlags {
    /// No flag.
    pub const EMPTY: QualityFlags = QualityFlags(0);
    /// The value is outside the sensor's `[min, max]` (range action `flag`).
    pub const OUT_OF_RANGE: QualityFlags = QualityFlags(1);
    /// The value changed faster than the sensor's `max_rate_per_s` (rate action `flag`).
    pub const RATE_OF_CHANGE: QualityFlags = QualityFlags(1 << 1);

    /// Every single flag with its output name, in output order.
    const NAMED: [(QualityFlags, &'static str); 2] =
        [(QualityFlags::OUT_OF_RANGE, "out_of_range"), (QualityFlags::RATE_OF_CHANGE, "rate_of_change")];

    /// The flag with this snake_case name.
    pub fn from_name(name: &str) -> Option<QualityFlags> {
        QualityFlags::NAMED.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    /// The raw bits (one per flag).
    /// The flags of `bits` (unknown bits are dropped).
    pub const fn from_bits(bits: u8) -> QualityFlags {
        QualityFlags(bits & (Self::OUT_OF_RANGE.0 | Self::RATE_OF_CHANGE.0))
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: QualityFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: QualityFlags) {
        self.0 |= other.0;
    }

    /// The snake_case names of the set flags, for output (`out_of_range`, `rate_of_change`).
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        QualityFlags::NAMED.into_iter().filter(move |(f, _)| self.contains(*f)).map(|(_, n)| n)
    }
}

impl std::ops::BitOr for QualityFlags {
    type Output = QualityFlags;
    fn bitor(self, rhs: QualityFlags) -> QualityFlags {
        QualityFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for QualityFlags {
    fn bitor_assign(&mut self, rhs: QualityFlags) {
        self.insert(rhs);
    }
}

/// The names, comma-separated (empty when no flag is set).
impl fmt::Display for QualityFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl fmt::Debug for QualityFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Serialised as a list of names: `["out_of_range", "rate_of_change"]`.
impl Serialize for QualityFlags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> Deserialize<'de> for QualityFlags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut flags = QualityFlags::EMPTY;
        for name in &names {
            let flag = QualityFlags::from_name(name).ok_or_else(|| {
                serde::de::Error::unknown_variant(name, &["out_of_range", "rate_of_change"])
            })?;
            flags.insert(flag);
        }
        Ok(flags)
    }
}

/// What one sensor's validation remembers: its last accepted on-time reading, the base of
/// the rate-of-change check.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ValidationState {
    last: Option<(EventTime, f64)>,
}

impl ValidationState {
    pub fn new() -> Self {
        ValidationState::default()
    }

    /// The (ts, value) of the newest on-time reading that passed, if any.
    pub fn last_accepted(&self) -> Option<(EventTime, f64)> {
        self.last
    }
}

/// The outcome of validating one reading.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum Check {
    /// Keep the reading, with these quality flags (often none). Callers should not feed a
    /// flagged reading into detector statistics.
    Pass(QualityFlags),
    /// Send the reading to the dead letters.
    Reject {
        reason: Reason,
        /// Human-readable: the offending number and the limit.
        detail: String,
    },
}

impl Check {
    pub fn is_pass(&self) -> bool {
        matches!(self, Check::Pass(_))
    }

    /// The flags of a pass, or the refusal (to attach a source location to).
    pub fn into_result(self) -> Result<QualityFlags, Rejection> {
        match self {
            Check::Pass(flags) => Ok(flags),
            Check::Reject { reason, detail } => Err(Rejection { reason, detail }),
        }
    }
}

impl From<Rejection> for Check {
    fn from(r: Rejection) -> Self {
        Check::Reject { reason: r.reason, detail: r.detail }
    }
}

/// The future-timestamp check on its own, for sensors without rules too: a refusal
/// (`future_timestamp`) when `ts > now_ms + max_future_ms`. `max_future_ms = None` turns the
/// check off. Exactly `max_future_ms` ahead still passes.
pub fn check_future(ts: EventTime, now_ms: EventTime, max_future_ms: Option<u64>) -> Option<Rejection> {
    let limit = max_future_ms?;
    if ts <= now_ms.saturating_add(limit) {
        return None;
    }
    Some(Rejection::new(
        Reason::FutureTimestamp,
        format!(
            "ts {} is {} ms ahead of the clock ({}); at most {limit} ms is allowed",
            show_ts(ts),
            ts - now_ms,
            show_ts(now_ms)
        ),
    ))
}

/// Validates an on-time reading and, when it passes, makes it the sensor's last reading.
///
/// Checks, in order, stopping at the first refusal:
/// 1. future timestamp ([`check_future`]): refused as `future_timestamp`;
/// 2. unit: a reading with a unit other than the rules' is refused as `unit_mismatch` (one
///    without a unit passes);
/// 3. a non-finite value is refused as `non_finite` (the decoders already refuse those, so
///    this only guards callers that build readings themselves);
/// 4. range: a value outside `[min, max]` (inclusive) is refused as `out_of_range` or flagged
///    `OUT_OF_RANGE`, per `range_action`;
/// 5. rate of change: `|value − last value| / Δt` (per second), against the last reading of
///    this sensor that passed, when `Δt > 0`. Above `max_rate_per_s` it is refused as
///    `rate_of_change` or flagged `RATE_OF_CHANGE`, per `rate_action`. A sensor's first
///    reading, and readings at the same ts as the last one, pass this check.
///
/// A reading that passes (flagged or not) becomes the sensor's last reading (unless it is
/// older than it); a refused reading leaves the state unchanged.
///
/// Expects each sensor's on-time readings in event-time order, the order the dataflow's
/// per-sensor step already sees them in (an older one is not rate-checked and does not
/// replace the last reading). Late readings go through [`validate_late`] instead.
pub fn validate(
    rules: &SensorRules,
    state: &mut ValidationState,
    reading: &Reading,
    now_ms: EventTime,
    max_future_ms: Option<u64>,
) -> Check {
    let mut flags = match check_stateless(rules, reading, now_ms, max_future_ms) {
        Ok(flags) => flags,
        Err(rejection) => return rejection.into(),
    };
    if let (Some(limit), Some((last_ts, last_value))) = (rules.max_rate_per_s, state.last) {
        if reading.ts > last_ts {
            let dt_s = (reading.ts - last_ts) as f64 / 1000.0;
            let rate = (reading.value - last_value).abs() / dt_s;
            if rate > limit {
                match rules.rate_action {
                    Action::Flag => flags.insert(QualityFlags::RATE_OF_CHANGE),
                    Action::Reject => {
                        let detail = format!(
                            "rate of change {}/s above the maximum {}/s for {} (from {} to {} in {dt_s} s)",
                            show_rate(rate),
                            show_num(limit),
                            rules.origin(),
                            show_num(last_value),
                            show_num(reading.value)
                        );
                        return Check::Reject { reason: Reason::RateOfChange, detail };
                    }
                }
            }
        }
    }
    if state.last.is_none_or(|(last_ts, _)| reading.ts >= last_ts) {
        state.last = Some((reading.ts, reading.value));
    }
    Check::Pass(flags)
}

/// Validates a late reading (older than the watermark, kept by the late policy): the future,
/// unit, non-finite and range checks of [`validate`], but no rate-of-change check (its
/// predecessor is unknown) and no effect on the sensor's state.
pub fn validate_late(
    rules: &SensorRules,
    reading: &Reading,
    now_ms: EventTime,
    max_future_ms: Option<u64>,
) -> Check {
    match check_stateless(rules, reading, now_ms, max_future_ms) {
        Ok(flags) => Check::Pass(flags),
        Err(rejection) => rejection.into(),
    }
}

/// Checks 1–4 of [`validate`].
fn check_stateless(
    rules: &SensorRules,
    reading: &Reading,
    now_ms: EventTime,
    max_future_ms: Option<u64>,
) -> Result<QualityFlags, Rejection> {
    if let Some(rejection) = check_future(reading.ts, now_ms, max_future_ms) {
        return Err(rejection);
    }
    if let (Some(expected), Some(got)) = (&rules.unit, &reading.unit) {
        if expected.as_str() != got.as_str() {
            return Err(Rejection::new(
                Reason::UnitMismatch,
                format!("unit `{got}` where {} expects `{expected}`", rules.origin()),
            ));
        }
    }
    let value = reading.value;
    if !value.is_finite() {
        return Err(Rejection::new(Reason::NonFinite, format!("value {value} is not finite")));
    }
    let mut flags = QualityFlags::EMPTY;
    let violation = match (rules.min, rules.max) {
        (Some(min), _) if value < min => Some(("below the minimum", min)),
        (_, Some(max)) if value > max => Some(("above the maximum", max)),
        _ => None,
    };
    if let Some((what, limit)) = violation {
        match rules.range_action {
            Action::Flag => flags.insert(QualityFlags::OUT_OF_RANGE),
            Action::Reject => {
                return Err(Rejection::new(
                    Reason::OutOfRange,
                    format!("value {} {what} {} for {}", show_num(value), show_num(limit), rules.origin()),
                ))
            }
        }
    }
    Ok(flags)
}

/// A timestamp for a message: RFC 3339 when it can be written so, else epoch ms.
fn show_ts(ts: EventTime) -> String {
    if ts <= MAX_EVENT_TIME {
        format_rfc3339_millis(ts)
    } else {
        format!("{ts} (epoch ms)")
    }
}

/// A number for a message: as written (`50`, `93.2`), in exponent form when very large or
/// very small.
fn show_num(x: f64) -> String {
    if x != 0.0 && !(1e-6..1e16).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

/// A computed rate for a message: at most three decimals, without trailing zeros.
fn show_rate(rate: f64) -> String {
    if !rate.is_finite() || rate >= 1e9 {
        return format!("{rate:e}");
    }
    let text = format!("{rate:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "0" && rate > 0.0 {
        format!("{rate:e}")
    } else {
        text.to_owned()
    }
}
