//! The `file:PATH` source: JSON lines, or CSV with a header.
//!
//! The file is memory-mapped and cut into chunks of about [`CHUNK_BYTES`] at line boundaries.
//! Chunk `c` belongs to the process of global worker `c % peers`, so every process reads its
//! share, and the workers advance through the file side by side (the frontier moves steadily
//! instead of waiting for one worker to finish a contiguous half). Within a process, a worker
//! decodes whichever of the process's chunks is next when it is ready for one
//! ([`FileInput::claim_chunk`]): readings are exchanged by sensor, and sensors never split
//! evenly over workers, so the worker with fewer sensors decodes more of the file instead of
//! waiting for the other. Which worker decodes a chunk changes nothing in the output.
//!
//! Lateness and line numbers are defined by file order, as if one reader read the whole file:
//! a reading is late when it is older than the largest earlier timestamp in the file less the
//! allowed lateness. Each worker decodes its chunks alone, publishes a [`ChunkSummary`] (line
//! count, largest timestamp) to every worker, and classifies a chunk once the summaries of all
//! earlier chunks are in. The result is independent of the number of workers and processes.

mod source;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::Mmap;
use millstream_events::decode::{decode_json, trim_line_end, CsvHeader, CsvHeaderError};
use millstream_events::{DeadLetter, EventTime, Origin, RawRef, Reading, Rejection, SourceLocation};
use serde::{Deserialize, Serialize};

pub use source::file_source;

/// Target chunk size. Large enough to amortise per-batch work, small enough that workers
/// interleave finely and little is buffered ahead of the frontier.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Errors opening a file source; all are fatal at start-up.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot map {path} into memory: {source}")]
    Map { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Header { path: PathBuf, source: CsvHeaderError },
}

/// The record format, decided from the extension and the first line.
#[derive(Debug, Clone)]
pub enum Format {
    JsonLines,
    /// CSV; the header is line 1 and is not a record.
    Csv(CsvHeader),
}

/// The bytes of an input: mapped from a regular file, or read whole from a pipe or device.
enum FileData {
    Empty,
    Mapped(Mmap),
    Read(Vec<u8>),
}

impl FileData {
    fn bytes(&self) -> &[u8] {
        match self {
            FileData::Empty => &[],
            FileData::Mapped(map) => map,
            FileData::Read(bytes) => bytes,
        }
    }
}

/// An opened input file, shared (read-only) by every worker of a process.
pub struct FileInput {
    path: PathBuf,
    display_name: String,
    data: FileData,
    format: Format,
    /// Byte offset where each chunk starts; chunk `i` ends where chunk `i + 1` starts.
    chunk_starts: Vec<usize>,
    /// How many of this process's chunks its workers have claimed so far.
    claimed: AtomicU64,
}

impl std::fmt::Debug for FileInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileInput")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("chunks", &self.chunk_starts.len())
            .finish()
    }
}

/// Which chunks a process owns: with `workers` workers in each process, process `p` (global
/// workers `p·workers .. (p+1)·workers`) owns chunk `c` when `c % peers` falls in that range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    pub process: u64,
    pub workers: u64,
    pub peers: u64,
}

impl ChunkLayout {
    /// The layout of global worker `index` of `peers`, in processes of `workers` workers each.
    /// `workers` of 0 or not dividing `peers` counts each worker as its own process.
    pub fn of_worker(index: u64, peers: u64, workers: u64) -> ChunkLayout {
        let workers = if workers > 0 && peers.is_multiple_of(workers) { workers } else { 1 };
        ChunkLayout { process: index / workers, workers, peers: peers.max(1) }
    }

    /// The `k`-th chunk of this process, counting from 0.
    pub fn chunk(&self, k: u64) -> u64 {
        (k / self.workers) * self.peers + self.process * self.workers + k % self.workers
    }
}

/// One decoded record of a chunk, before file-order classification.
#[derive(Debug, Clone)]
pub(crate) enum ChunkRecord {
    Reading { reading: Reading, line_in_chunk: u64, raw: RawRef },
    Rejected { rejection: Rejection, line_in_chunk: u64, raw: String },
}

/// What every worker must know about a chunk to classify later chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSummary {
    pub chunk: u64,
    pub lines: u64,
    pub max_ts: Option<EventTime>,
}

impl FileInput {
    /// Opens and maps `path`, detects the format and plans the chunks.
    pub fn open(path: &Path) -> Result<Arc<Self>, FileSourceError> {
        Self::open_with_chunk_size(path, CHUNK_BYTES)
    }

    pub fn open_with_chunk_size(path: &Path, chunk_bytes: usize) -> Result<Arc<Self>, FileSourceError> {
        let mut file =
            File::open(path).map_err(|source| FileSourceError::Open { path: path.into(), source })?;
        let metadata =
            file.metadata().map_err(|source| FileSourceError::Open { path: path.into(), source })?;
        let data = if !metadata.is_file() {
            // A pipe, a FIFO or a device (`file:/dev/stdin`): it cannot be mapped, and has no
            // length before it is read. Read it whole; the chunks are planned over that.
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|source| FileSourceError::Read { path: path.into(), source })?;
            FileData::Read(bytes)
        } else if metadata.len() == 0 {
            // A zero-length file cannot be mapped on every platform; it simply has no chunks.
            FileData::Empty
        } else {
            // SAFETY: the map is read-only; a file truncated underneath a running source is
            // outside what a file source supports (as with every mmap reader).
            FileData::Mapped(
                unsafe { Mmap::map(&file) }
                    .map_err(|source| FileSourceError::Map { path: path.into(), source })?,
            )
        };
        let bytes = data.bytes();
        let format = detect_format(path, bytes)
            .map_err(|source| FileSourceError::Header { path: path.into(), source })?;
        let chunk_starts = plan_chunks(bytes, chunk_bytes.max(1));
        Ok(Arc::new(FileInput {
            display_name: path.display().to_string(),
            path: path.into(),
            data,
            format,
            chunk_starts,
            claimed: AtomicU64::new(0),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> &Format {
        &self.format
    }

    pub fn chunk_count(&self) -> u64 {
        self.chunk_starts.len() as u64
    }

    /// The chunk the next [`Self::claim_chunk`] of `layout`'s process would return (another
    /// worker of the process may take it first).
    pub fn next_chunk(&self, layout: ChunkLayout) -> u64 {
        layout.chunk(self.claimed.load(Ordering::Relaxed))
    }

    /// Claims the next chunk of `layout`'s process for the calling worker. Chunks are claimed in
    /// increasing order; one at or past [`Self::chunk_count`] means the process's share is done.
    /// An `Arc<FileInput>` serves one run: its claims are not reset.
    pub fn claim_chunk(&self, layout: ChunkLayout) -> u64 {
        layout.chunk(self.claimed.fetch_add(1, Ordering::Relaxed))
    }

    fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// Whether the input was read from a pipe or a device rather than mapped from a regular
    /// file: then only this process has its data, and a cluster of processes cannot share it.
    pub fn is_stream(&self) -> bool {
        matches!(self.data, FileData::Read(_))
    }

    fn chunk_bytes(&self, chunk: u64) -> (usize, &[u8]) {
        let c = chunk as usize;
        let start = self.chunk_starts[c];
        let end = self.chunk_starts.get(c + 1).copied().unwrap_or(self.bytes().len());
        (start, &self.bytes()[start..end])
    }

    /// Decodes one chunk; `csv` is this worker's copy of the header (it holds parse buffers).
    #[cfg(test)]
    pub(crate) fn decode_chunk(
        &self,
        chunk: u64,
        csv: &mut Option<CsvHeader>,
    ) -> (ChunkSummary, Vec<ChunkRecord>) {
        self.decode_chunk_into(chunk, csv, Vec::new(), EventTime::MAX)
    }

    /// Decodes one chunk into `records` (cleared first), reusing its allocation.
    pub(crate) fn decode_chunk_into(
        &self,
        chunk: u64,
        csv: &mut Option<CsvHeader>,
        mut records: Vec<ChunkRecord>,
        future_cutoff: EventTime,
    ) -> (ChunkSummary, Vec<ChunkRecord>) {
        let (start, bytes) = self.chunk_bytes(chunk);
        records.clear();
        records.reserve(bytes.len() / 64);
        let mut max_ts: Option<EventTime> = None;
        let mut lines = 0u64;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i + 1);
            let mut line = trim_line_end(&bytes[pos..end]);
            if chunk == 0 && pos == 0 {
                line = strip_bom(line);
            }
            let line_in_chunk = lines;
            lines += 1;
            let is_header = chunk == 0 && pos == 0 && csv.is_some();
            if !is_header {
                let decoded = match csv {
                    Some(header) => header.decode(line),
                    None => decode_json(line),
                };
                match decoded {
                    Ok(reading) => {
                        // A reading past the cutoff (a wild clock) is refused later and must not
                        // move event time.
                        if reading.ts <= future_cutoff {
                            max_ts = Some(max_ts.map_or(reading.ts, |m| m.max(reading.ts)));
                        }
                        let raw = RawRef { byte_offset: (start + pos) as u64, len: line.len() as u32 };
                        records.push(ChunkRecord::Reading { reading, line_in_chunk, raw });
                    }
                    Err(rejection) => records.push(ChunkRecord::Rejected {
                        rejection,
                        line_in_chunk,
                        raw: String::from_utf8_lossy(line).into_owned(),
                    }),
                }
            }
            pos = end;
        }
        (ChunkSummary { chunk, lines, max_ts }, records)
    }

    /// The original text of an accepted record.
    pub fn raw_text(&self, raw: RawRef) -> String {
        let start = raw.byte_offset as usize;
        let end = start.saturating_add(raw.len as usize).min(self.bytes().len());
        String::from_utf8_lossy(self.bytes().get(start..end).unwrap_or(&[])).into_owned()
    }

    /// Where an accepted record was read: `{"file": …, "line": N}`.
    pub fn location(&self, origin: Origin) -> SourceLocation {
        SourceLocation::File { file: self.display_name.clone(), line: origin.offset }
    }

    pub(crate) fn dead_letter(&self, rejection: Rejection, line: u64, raw: String) -> DeadLetter {
        DeadLetter {
            reason: rejection.reason,
            detail: rejection.detail,
            raw,
            source: SourceLocation::File { file: self.display_name.clone(), line },
        }
    }

    /// A fresh copy of the CSV header (with its own parse buffers) for one worker.
    pub(crate) fn csv_header(&self) -> Option<CsvHeader> {
        match &self.format {
            Format::Csv(header) => Some(header.clone()),
            Format::JsonLines => None,
        }
    }
}

/// `.csv` files, and files whose first line is not a JSON object but is a CSV header naming
/// the contract's columns, are CSV; everything else is JSON lines.
fn detect_format(path: &Path, bytes: &[u8]) -> Result<Format, CsvHeaderError> {
    let first_line_end = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len());
    let first_line = strip_bom(trim_line_end(&bytes[..first_line_end]));
    let is_csv_extension = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let looks_like_json = first_line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if is_csv_extension {
        return CsvHeader::parse(first_line).map(Format::Csv);
    }
    if !looks_like_json && !first_line.is_empty() {
        if let Ok(header) = CsvHeader::parse(first_line) {
            return Ok(Format::Csv(header));
        }
    }
    Ok(Format::JsonLines)
}

/// Editors on Windows start UTF-8 files with a byte-order mark; it is not part of the record.
fn strip_bom(line: &[u8]) -> &[u8] {
    line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
}

/// Chunk starts: every `chunk_bytes`, moved forward to the start of the next line.
fn plan_chunks(bytes: &[u8], chunk_bytes: usize) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut start = 0usize;
    while start < bytes.len() {
        starts.push(start);
        let target = start + chunk_bytes;
        if target >= bytes.len() {
            break;
        }
        start = match memchr::memchr(b'\n', &bytes[target - 1..]) {
            Some(i) => target - 1 + i + 1,
            None => bytes.len(),
        };
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("millstream-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
        path
    }

    #[test]
    fn chunk_layouts_split_every_chunk_between_processes_exactly_once() {
        for (peers, workers) in [(1, 1), (2, 2), (2, 1), (4, 2), (6, 3), (6, 1), (3, 0), (4, 3)] {
            let mut seen = std::collections::BTreeMap::new();
            for index in 0..peers {
                let layout = ChunkLayout::of_worker(index, peers, workers);
                if index % layout.workers != 0 {
                    continue; // one claim sequence per process
                }
                let chunks: Vec<u64> = (0..40).map(|k| layout.chunk(k)).collect();
                assert!(chunks.windows(2).all(|w| w[0] < w[1]), "increasing: {chunks:?}");
                for c in chunks {
                    assert_eq!(seen.insert(c, layout.process), None, "chunk {c} claimed twice");
                }
            }
            let covered = (0..40).all(|c| seen.contains_key(&c));
            assert!(covered, "peers {peers}, workers {workers}: {seen:?}");
        }
    }

    #[test]
    fn chunks_cover_the_file_at_line_starts() {
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        for size in [1, 7, 64, 1000, 100_000] {
            let starts = plan_chunks(text.as_bytes(), size);
            assert_eq!(starts[0], 0);
            for w in starts.windows(2) {
                assert!(w[0] < w[1]);
                assert_eq!(text.as_bytes()[w[1] - 1], b'\n');
            }
        }
        assert!(plan_chunks(b"", 10).is_empty());
    }

    #[test]
    fn lines_are_counted_across_chunks_and_csv_header_skipped() {
        let path = write_temp("t.csv", "sensor_id,ts,value\na/b,1,2\na/b,2,x\n\na/b,3,4");
        let input = FileInput::open_with_chunk_size(&path, 8).unwrap();
        let mut csv = input.csv_header();
        let mut lines = 0;
        let mut accepted = 0;
        let mut rejected = 0;
        for c in 0..input.chunk_count() {
            let (summary, records) = input.decode_chunk(c, &mut csv);
            lines += summary.lines;
            for r in records {
                match r {
                    ChunkRecord::Reading { .. } => accepted += 1,
                    ChunkRecord::Rejected { .. } => rejected += 1,
                }
            }
        }
        assert_eq!(lines, 5);
        assert_eq!((accepted, rejected), (2, 2));
    }

    #[test]
    fn json_is_detected_and_raw_text_recovered() {
        let path = write_temp("t.jsonl", "{\"sensor_id\":\"a\",\"ts\":5,\"value\":1}\r\n");
        let input = FileInput::open(&path).unwrap();
        assert!(matches!(input.format(), Format::JsonLines));
        let (summary, records) = input.decode_chunk(0, &mut None);
        assert_eq!(summary.max_ts, Some(5));
        let ChunkRecord::Reading { raw, .. } = &records[0] else { panic!("not accepted") };
        assert_eq!(input.raw_text(*raw), "{\"sensor_id\":\"a\",\"ts\":5,\"value\":1}");
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_record() {
        let path = write_temp("bom.csv", "\u{feff}sensor_id,ts,value\na/b,1,2\n");
        let input = FileInput::open(&path).unwrap();
        let (_, records) = input.decode_chunk(0, &mut input.csv_header());
        assert!(matches!(records.as_slice(), [ChunkRecord::Reading { .. }]));
        let path = write_temp("bom.jsonl", "\u{feff}{\"sensor_id\":\"a\",\"ts\":5,\"value\":1}\n");
        let (_, records) = FileInput::open(&path).unwrap().decode_chunk(0, &mut None);
        assert!(matches!(records.as_slice(), [ChunkRecord::Reading { .. }]));
    }

    #[test]
    fn csv_without_required_columns_is_refused() {
        let path = write_temp("bad.csv", "a,b,c\n1,2,3\n");
        let err = FileInput::open(&path).unwrap_err().to_string();
        assert!(err.contains("sensor_id"), "{err}");
    }
}
