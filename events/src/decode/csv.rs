//! The CSV decoder: rows under a header naming `sensor_id`, `ts`, `value` and optionally
//! `asset_id` and `unit`, in any order (other columns are ignored, like unknown JSON keys).
//!
//! Rows are decoded one line at a time with csv-core (quoted fields work; a quoted field
//! may not contain a newline, because sources split files at line boundaries). Quotes follow
//! RFC 4180: a quote anywhere else makes the row `malformed_csv`, so the halves of a field
//! split across lines are both refused rather than one passing as a row.

use super::{build_reading, MAX_RECORD_BYTES};
use crate::time::{check_epoch_millis, parse_rfc3339};
use crate::{Reading, Reason, Rejection};

/// A header that cannot describe readings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvHeaderError {
    #[error("CSV header lacks the `{0}` column (expected sensor_id,ts,value[,asset_id,unit])")]
    MissingColumn(&'static str),
    #[error("CSV header names `{0}` twice")]
    DuplicateColumn(String),
    #[error("CSV header is not valid CSV")]
    Malformed,
}

/// Column positions read from the header line, plus reusable parse buffers.
#[derive(Debug, Clone)]
pub struct CsvHeader {
    sensor_id: usize,
    ts: usize,
    value: usize,
    asset_id: Option<usize>,
    unit: Option<usize>,
    columns: usize,
    fields: Vec<u8>,
    ends: Vec<usize>,
}

impl CsvHeader {
    /// Reads the header line.
    pub fn parse(line: &[u8]) -> Result<Self, CsvHeaderError> {
        let mut fields = Vec::new();
        let mut ends = Vec::new();
        split(super::trim_line_end(line), &mut fields, &mut ends).ok_or(CsvHeaderError::Malformed)?;
        let names: Vec<String> = field_iter(&fields, &ends)
            .map(|f| String::from_utf8_lossy(f).trim().to_ascii_lowercase())
            .collect();
        let position = |name: &'static str| -> Result<Option<usize>, CsvHeaderError> {
            let mut hits = names.iter().enumerate().filter(|(_, n)| n.as_str() == name);
            let first = hits.next().map(|(i, _)| i);
            if hits.next().is_some() {
                return Err(CsvHeaderError::DuplicateColumn(name.to_owned()));
            }
            Ok(first)
        };
        let required = |name: &'static str| position(name)?.ok_or(CsvHeaderError::MissingColumn(name));
        Ok(CsvHeader {
            sensor_id: required("sensor_id")?,
            ts: required("ts")?,
            value: required("value")?,
            asset_id: position("asset_id")?,
            unit: position("unit")?,
            columns: names.len(),
            fields,
            ends,
        })
    }

    /// Decodes one data row.
    pub fn decode(&mut self, line: &[u8]) -> Result<Reading, Rejection> {
        if line.len() > MAX_RECORD_BYTES {
            return Err(Rejection::new(Reason::TooLarge, format!("row is {} bytes", line.len())));
        }
        if split(line, &mut self.fields, &mut self.ends).is_none() {
            return Err(Rejection::new(Reason::MalformedCsv, "row is not valid CSV"));
        }
        if self.ends.len() != self.columns {
            return Err(Rejection::new(
                Reason::MalformedCsv,
                format!("row has {} fields, the header has {}", self.ends.len(), self.columns),
            ));
        }
        let text = |i: usize| -> Result<&str, Rejection> {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            std::str::from_utf8(&self.fields[start..self.ends[i]])
                .map_err(|_| Rejection::new(Reason::MalformedCsv, "row is not valid UTF-8"))
        };
        let sensor_id = text(self.sensor_id)?;
        let ts_text = text(self.ts)?.trim();
        let value_text = text(self.value)?.trim();
        if ts_text.is_empty() {
            return Err(Rejection::new(Reason::MissingField, "ts is empty"));
        }
        if value_text.is_empty() {
            return Err(Rejection::new(Reason::MissingField, "value is empty"));
        }
        let ts = if ts_text.bytes().all(|b| b.is_ascii_digit()) {
            ts_text
                .parse::<i128>()
                .map_err(|e| e.to_string())
                .and_then(|ms| check_epoch_millis(ms).map_err(|e| e.to_string()))
        } else {
            parse_rfc3339(ts_text).map_err(|e| e.to_string())
        }
        .map_err(|detail| Rejection::new(Reason::BadTimestamp, detail))?;
        let value: f64 = value_text.parse().map_err(|_| {
            Rejection::new(Reason::WrongType, format!("value `{value_text}` is not a number"))
        })?;
        let optional = |column: Option<usize>| -> Result<Option<&str>, Rejection> {
            match column {
                Some(i) => text(i).map(|s| Some(s).filter(|s| !s.is_empty())),
                None => Ok(None),
            }
        };
        build_reading(sensor_id, optional(self.asset_id)?, ts, value, optional(self.unit)?)
    }
}

/// Splits one line into fields; `None` when the line is not one complete CSV record.
fn split(line: &[u8], fields: &mut Vec<u8>, ends: &mut Vec<usize>) -> Option<()> {
    use csv_core::ReadFieldResult;
    let line = super::trim_line_end(line);
    // Most rows have no quote at all: skip the byte-by-byte check for them.
    if memchr::memchr(b'"', line).is_some() && !quotes_are_well_placed(line) {
        return None;
    }
    fields.clear();
    ends.clear();
    fields.resize(line.len().max(1), 0);
    let mut reader = csv_core::Reader::new();
    let (mut input, mut written) = (line, 0usize);
    loop {
        let (result, read, wrote) = reader.read_field(input, &mut fields[written..]);
        input = &input[read..];
        written += wrote;
        match result {
            ReadFieldResult::Field { record_end } => {
                ends.push(written);
                if record_end {
                    break;
                }
            }
            ReadFieldResult::InputEmpty => {
                // Signal end of input so the final field is emitted.
                let (result, _, wrote) = reader.read_field(&[], &mut fields[written..]);
                written += wrote;
                match result {
                    ReadFieldResult::Field { .. } => ends.push(written),
                    ReadFieldResult::End => {}
                    _ => return None,
                }
                break;
            }
            ReadFieldResult::End => break,
            ReadFieldResult::OutputFull => return None,
        }
    }
    if !input.is_empty() {
        return None;
    }
    fields.truncate(written);
    Some(())
}

/// Whether every `"` of a line opens a quoted field (as its first byte), closes one (followed by
/// a comma or the end), or is doubled inside one: RFC 4180. csv-core tolerates a stray quote in
/// an unquoted field, which is how the second half of a quoted field split across lines would
/// otherwise pass as a row (`ration",2026-…,1` after `"p/vib`), quotes and all.
fn quotes_are_well_placed(line: &[u8]) -> bool {
    #[derive(Clone, Copy)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        /// A `"` inside a quoted field: the closing quote, or the first of a doubled one.
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    for &byte in line {
        state = match (state, byte) {
            (State::FieldStart, b'"') => State::Quoted,
            (State::FieldStart | State::Unquoted | State::QuoteInQuoted, b',') => State::FieldStart,
            (State::Unquoted, b'"') => return false,
            (State::FieldStart | State::Unquoted, _) => State::Unquoted,
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (State::QuoteInQuoted, b'"') => State::Quoted,
            (State::QuoteInQuoted, _) => return false,
        };
    }
    !matches!(state, State::Quoted)
}

fn field_iter<'a>(fields: &'a [u8], ends: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    ends.iter().scan(0usize, move |start, &end| {
        let f = &fields[*start..end];
        *start = end;
        Some(f)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_rows_in_header_order() {
        let mut h = CsvHeader::parse(b"ts,value,sensor_id,unit\r\n").unwrap();
        let r = h.decode(b"2026-03-01T00:00:00Z,2.5,\"pump,1/temp\",degC").unwrap();
        assert_eq!(r.sensor_id, "pump,1/temp");
        assert_eq!(r.asset_id, "pump,1");
        assert_eq!(r.value, 2.5);
        assert_eq!(r.unit.as_deref(), Some("degC"));
        let r = h.decode(b"1772323200000,3,a/b,").unwrap();
        assert_eq!(r.ts, 1_772_323_200_000);
        assert_eq!(r.unit, None);
    }

    #[test]
    fn header_errors_are_clear() {
        assert_eq!(CsvHeader::parse(b"sensor_id,value").unwrap_err(), CsvHeaderError::MissingColumn("ts"));
        assert!(matches!(
            CsvHeader::parse(b"sensor_id,ts,value,ts"),
            Err(CsvHeaderError::DuplicateColumn(_))
        ));
    }

    #[test]
    fn bad_rows_get_reasons() {
        let mut h = CsvHeader::parse(b"sensor_id,ts,value,asset_id,unit").unwrap();
        let reason = |h: &mut CsvHeader, l: &str| h.decode(l.as_bytes()).unwrap_err().reason;
        assert_eq!(reason(&mut h, "a,0,1"), Reason::MalformedCsv);
        assert_eq!(reason(&mut h, "a,0,1,b,c,d"), Reason::MalformedCsv);
        assert_eq!(reason(&mut h, ",0,1,,"), Reason::EmptySensorId);
        assert_eq!(reason(&mut h, "a,,1,,"), Reason::MissingField);
        assert_eq!(reason(&mut h, "a,0,,,"), Reason::MissingField);
        assert_eq!(reason(&mut h, "a,soon,1,,"), Reason::BadTimestamp);
        assert_eq!(reason(&mut h, "a,0,abc,,"), Reason::WrongType);
        assert_eq!(reason(&mut h, "a,0,NaN,,"), Reason::NonFinite);
        assert_eq!(reason(&mut h, "a,0,inf,,"), Reason::NonFinite);
        assert_eq!(reason(&mut h, "\"a,0,1,,"), Reason::MalformedCsv);
        // The second half of a quoted field split across lines, and other stray quotes.
        assert_eq!(reason(&mut h, "ration\",2026-03-01T00:00:00Z,1,,"), Reason::MalformedCsv);
        assert_eq!(reason(&mut h, "a\"b,0,1,,"), Reason::MalformedCsv);
        assert_eq!(reason(&mut h, "\"a\"b,0,1,,"), Reason::MalformedCsv);
        // A quote after spaces is not an opening quote: the field would keep its quotes.
        assert_eq!(reason(&mut h, "a,0,1, \"pump\","), Reason::MalformedCsv);
        assert_eq!(h.decode(b"a, 0, 1,pump,").unwrap().value, 1.0, "spaces alone are fine");
    }

    #[test]
    fn quoted_fields_may_hold_commas_and_doubled_quotes() {
        let mut h = CsvHeader::parse(b"sensor_id,ts,value,asset_id,unit").unwrap();
        let r = h.decode(b"\"p,1/\"\"x\"\"\",0,1.5,\"pump\",\"\"").unwrap();
        assert_eq!(r.sensor_id, "p,1/\"x\"");
        assert_eq!(r.asset_id, "pump");
        assert_eq!(r.value, 1.5);
        assert_eq!(r.unit, None);
    }

    proptest! {
        #[test]
        fn arbitrary_rows_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let mut h = CsvHeader::parse(b"sensor_id,ts,value,asset_id,unit").unwrap();
            let _ = h.decode(&bytes);
        }

        #[test]
        fn valid_rows_round_trip(sensor in "[a-z]{1,8}/[a-z]{1,8}", ts in 0u64..4_000_000_000_000, value in -1e9f64..1e9) {
            let mut h = CsvHeader::parse(b"sensor_id,ts,value").unwrap();
            let r = h.decode(format!("{sensor},{ts},{value}").as_bytes()).unwrap();
            prop_assert_eq!(r.ts, ts);
            prop_assert_eq!(r.value, value);
        }
    }
}
