//! The CSV decoder (`events/src/decode/csv.rs`): the first line of the input is the header,
//! every further line a row, as the file source reads a CSV file.
//!
//! Invariants: header parsing and row decoding never panic; an accepted reading satisfies the
//! contract and round-trips (see `common::check_reading`); a refusal has a decode reason and a
//! detail; and an accepted reading written back as a row under the same header (fields quoted,
//! `ts` as epoch milliseconds) decodes to the same reading.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use millstream_events::decode::CsvHeader;
use millstream_events::Reading;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let Some(header_line) = lines.next() else { return };
    let Ok(mut header) = CsvHeader::parse(header_line) else { return };
    let names = column_names(header_line);
    for line in lines {
        match header.decode(line) {
            Ok(reading) => {
                common::check_reading(&reading);
                let row = write_row(&names, &reading);
                let again = header.decode(row.as_bytes()).unwrap_or_else(|r| {
                    panic!("row {row:?} written from {reading:?} does not decode: {r:?}")
                });
                assert_eq!(again, reading, "CSV round trip through {row:?}");
            }
            Err(rejection) => common::check_rejection(&rejection),
        }
    }
});

/// The header's column names as the decoder matches them (trimmed, lower case), read by the
/// `csv` crate (csv-core with the same defaults as the decoder, but not the decoder's code).
fn column_names(header: &[u8]) -> Vec<String> {
    let header = millstream_events::decode::trim_line_end(header);
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(header);
    let mut record = csv::ByteRecord::new();
    match reader.read_byte_record(&mut record) {
        Ok(true) => record.iter().map(|f| String::from_utf8_lossy(f).trim().to_ascii_lowercase()).collect(),
        _ => Vec::new(),
    }
}

/// A row under `names` holding `reading`: every field quoted (quotes doubled), unknown columns
/// empty, `ts` as epoch milliseconds, `value` in Rust's shortest round-trip notation.
fn write_row(names: &[String], reading: &Reading) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    names
        .iter()
        .map(|name| match name.as_str() {
            "sensor_id" => quote(&reading.sensor_id),
            "asset_id" => quote(&reading.asset_id),
            "ts" => reading.ts.to_string(),
            "value" => format!("{:?}", reading.value),
            "unit" => reading.unit.as_deref().map(quote).unwrap_or_default(),
            _ => String::new(),
        })
        .collect::<Vec<_>>()
        .join(",")
}
