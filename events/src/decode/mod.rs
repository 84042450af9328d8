//! Decoders for the input contract (ARCHITECTURE.md §6): JSON objects and CSV rows.
//!
//! Decoders are pure functions of one record's bytes: they return a [`Reading`] or a
//! [`Rejection`] with a closed-set reason. The source attaches the location.

mod csv;
mod field;
mod json;

pub use self::csv::{CsvHeader, CsvHeaderError};
pub use self::json::{decode_json, decode_json_with_serde_json};

use crate::{Reading, Reason, Rejection};

/// Records larger than this are refused with [`Reason::TooLarge`] before parsing.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The longest `sensor_id`, `asset_id` or `unit`, in bytes. Longer ones are refused as
/// `field_too_long`: a sensor key must fit a PostgreSQL btree index entry (at most 2 704 bytes)
/// and, with the record, a Kafka message; real tag names are far shorter.
pub const MAX_FIELD_BYTES: usize = 1024;

/// Builds a reading from already-typed parts, applying the contract's checks that do not
/// depend on the wire format: a non-empty sensor id and a finite value.
pub(crate) fn build_reading(
    sensor_id: &str,
    asset_id: Option<&str>,
    ts: crate::EventTime,
    value: f64,
    unit: Option<&str>,
) -> Result<Reading, Rejection> {
    if sensor_id.trim().is_empty() {
        return Err(Rejection::new(Reason::EmptySensorId, "sensor_id is empty"));
    }
    if !value.is_finite() {
        return Err(Rejection::new(Reason::NonFinite, format!("value {value} is not finite")));
    }
    for (name, field) in [("sensor_id", Some(sensor_id)), ("asset_id", asset_id), ("unit", unit)] {
        if let Some(field) = field.filter(|f| f.len() > MAX_FIELD_BYTES) {
            return Err(Rejection::new(
                Reason::FieldTooLong,
                format!("{name} is {} bytes, the limit is {MAX_FIELD_BYTES}", field.len()),
            ));
        }
    }
    let asset_id = match asset_id {
        Some(a) if !a.is_empty() => a,
        _ => Reading::default_asset_id(sensor_id),
    };
    Ok(Reading {
        sensor_id: sensor_id.into(),
        asset_id: asset_id.into(),
        ts,
        value,
        unit: unit.map(Into::into),
    })
}

/// Strips a trailing `\n` and then `\r`, so CRLF files decode like LF files.
pub fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
