//! Sink stages: gather rendered lines, order them by (event time, kind, text), and hand every
//! frontier-complete batch to a [`LineSink`], flushing after each.
//!
//! Ordering by event time and then content makes the files identical for any number of
//! workers and processes: each flush writes exactly the lines whose time the frontier has
//! passed, so the concatenation of flushes is the globally sorted order.

use millstream_events::{EventTime, OutputLine};
use millstream_sinks::LineSink;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use crate::stash::Stash;

/// Writes `lines` with the sink built by `make_sink`, on global worker 0 only. The output
/// stream carries nothing, but its frontier passes a time only once that time is written and
/// flushed: a probe on it tells when the sink is durable up to a time.
pub fn write_lines<'scope, F>(
    lines: Stream<'scope, EventTime, Vec<OutputLine>>,
    name: &str,
    make_sink: F,
    written: prometheus::IntCounter,
) -> Stream<'scope, EventTime, Vec<()>>
where
    F: FnOnce() -> std::io::Result<Box<dyn LineSink>> + 'static,
{
    let is_writer = lines.scope().index() == 0;
    let name = name.to_owned();
    let mut make_sink = Some(make_sink);
    lines.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &OutputLine| 0),
        &format!("Write({name})"),
        move |_, _| {
            let mut sink: Option<Box<dyn LineSink>> = None;
            if is_writer {
                let make = make_sink.take().expect("constructor runs once");
                sink = Some(make().unwrap_or_else(|e| fatal(&name, &e)));
            }
            let mut stash: Stash<OutputLine> = Stash::default();
            let mut finished = false;
            move |(input, frontier), _output| {
                stash.take(input);
                let frontier = frontier.frontier();
                let mut wrote = false;
                while let Some((_, mut batch)) = stash.pop_ready(frontier) {
                    batch.sort_unstable();
                    if let Some(sink) = sink.as_mut() {
                        for line in &batch {
                            sink.write_line(line.kind, &line.json).unwrap_or_else(|e| fatal(&name, &e));
                        }
                        written.inc_by(batch.len() as u64);
                    }
                    wrote = true;
                }
                if let Some(sink) = sink.as_mut() {
                    if frontier.is_empty() && !finished {
                        sink.finish().unwrap_or_else(|e| fatal(&name, &e));
                        finished = true;
                    } else if wrote {
                        sink.flush().unwrap_or_else(|e| fatal(&name, &e));
                    }
                }
                stash.hold(None);
            }
        },
    )
}

/// Discards lines where they are (the `null` sink).
pub fn discard_lines<'scope>(
    lines: Stream<'scope, EventTime, Vec<OutputLine>>,
) -> Stream<'scope, EventTime, Vec<()>> {
    lines.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Discard", |_, _| {
        move |input, _output| {
            input.for_each(|_, data| data.clear());
        }
    })
}

/// A sink that cannot write leaves the run without a durable output: stop the process with a
/// one-line reason rather than continue and exit 0.
fn fatal(sink: &str, error: &std::io::Error) -> ! {
    eprintln!("millstream: fatal: sink {sink}: {error}");
    std::process::exit(1);
}
