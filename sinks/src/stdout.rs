//! The `stdout` sink: one JSON object a line, `{"kind": …, "record": {…}}`.

use std::io::{self, Write};

use millstream_events::OutputKind;

use crate::LineSink;

pub struct StdoutSink {
    out: io::BufWriter<io::Stdout>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        StdoutSink { out: io::BufWriter::new(io::stdout()) }
    }
}

impl LineSink for StdoutSink {
    fn write_line(&mut self, kind: OutputKind, json: &str) -> io::Result<()> {
        writeln!(self.out, "{{\"kind\":\"{}\",\"record\":{json}}}", kind.tag())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
