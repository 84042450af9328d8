//! The `jsonl:DIR` sink.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use millstream_events::OutputKind;

use crate::LineSink;

/// Writes `anomalies.jsonl`, `dead_letters.jsonl` and (with scores) `scores.jsonl` in a
/// directory. Files are truncated at start, and a `scores.jsonl` left by an earlier run is
/// removed when this one writes no scores: a run's files hold that run's output.
pub struct JsonlSink {
    dir: PathBuf,
    files: Vec<(OutputKind, BufWriter<File>)>,
}

impl JsonlSink {
    pub fn create(dir: &Path, emit_scores: bool) -> io::Result<Self> {
        fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
        let mut files = Vec::new();
        for kind in OutputKind::ALL {
            let path = dir.join(kind.file_name());
            if kind.is_score() && !emit_scores {
                // A previous run's scores would sit beside this run's files as if they were its.
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("cannot remove {}: {e}", path.display()),
                        ));
                    }
                }
                continue;
            }
            let file = File::create(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
            files.push((kind, BufWriter::with_capacity(1 << 20, file)));
        }
        Ok(JsonlSink { dir: dir.to_owned(), files })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl LineSink for JsonlSink {
    fn write_line(&mut self, kind: OutputKind, json: &str) -> io::Result<()> {
        if let Some((_, w)) = self.files.iter_mut().find(|(k, _)| *k == kind) {
            w.write_all(json.as_bytes())?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.files.iter_mut().try_for_each(|(_, w)| w.flush())
    }

    fn finish(&mut self) -> io::Result<()> {
        for (_, w) in &mut self.files {
            w.flush()?;
            w.get_ref().sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_s_files_hold_only_that_run_s_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = JsonlSink::create(dir.path(), true).unwrap();
        first.write_line(OutputKind::Score, "{\"old\":1}").unwrap();
        first.write_line(OutputKind::Anomaly, "{\"old\":2}").unwrap();
        first.finish().unwrap();
        assert!(dir.path().join(OutputKind::Score.file_name()).exists());

        let mut second = JsonlSink::create(dir.path(), false).unwrap();
        second.finish().unwrap();
        assert!(!dir.path().join(OutputKind::Score.file_name()).exists(), "no stale scores");
        let anomalies = fs::read_to_string(dir.path().join(OutputKind::Anomaly.file_name())).unwrap();
        assert!(anomalies.is_empty(), "truncated: {anomalies}");
    }
}
