//! The processes of a timely cluster: connecting them with a bounded wait, and turning the loss
//! of one into a prompt exit of the others.
//!
//! A timely cluster cannot lose a process and go on: the dataflow's progress tracking needs every
//! worker. When a peer dies, timely's communication threads (`timely:recv-N`, `timely:send-N`)
//! panic with "timely communication error: …", the workers then panic on the poisoned queues,
//! and the main thread panics joining the communication threads: several panic messages and
//! backtraces, exit code 101. Here the first such panic prints one line naming the lost peer and
//! exits with [`EXIT_CLUSTER`], so that a supervisor (systemd, Kubernetes) restarts the whole
//! cluster, which resumes from the last checkpoint (the committed source offsets).
//!
//! A worker that panics (a bug) is made a one-line exit too, with [`EXIT_WORKER_FAILED`]:
//! otherwise the other workers of its process would wait for its progress forever.
//!
//! A host that vanishes without closing its connections is noticed by TCP keepalive and
//! `TCP_USER_TIMEOUT` (see `detect_silent_loss`), which turn it into a broken connection.
//!
//! At start-up, timely waits for its peers forever and prints "awaiting connections" to stdout
//! every second (where `--sink stdout` writes its records). [`execute`] makes the connections
//! itself, with timely's handshake (the connecting process sends its index as a big-endian
//! `u64`; process `i` connects to every `j < i` and accepts every `j > i`), logs through
//! `tracing`, ignores stray connections, and gives up after the start-up timeout with an error
//! that names the peers that never came. Then it hands the sockets to timely.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::ProcessBuilder;
use timely::communication::{AllocatorBuilder, Hooks, WorkerGuards};
use timely::worker::Worker;

/// Exit code when the cluster cannot run: a peer was lost, or never came up within the
/// start-up timeout. 75 is `EX_TEMPFAIL` of sysexits.h: restarting the cluster is the cure.
pub const EXIT_CLUSTER: u8 = 75;

/// Exit code when a worker panicked (a bug): 70 is `EX_SOFTWARE` of sysexits.h.
pub const EXIT_WORKER_FAILED: u8 = 70;

/// How long a process waits, by default, for all its peers to connect at start-up.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cluster peers did not come up within {}s: {}; exiting so that the supervisor restarts \
         the cluster",
        .waited.as_secs(),
        .missing.join(", ")
    )]
    StartupTimeout { waited: Duration, missing: Vec<String> },
    #[error("cannot listen on {address} (this is process {process} in the hostfile): {cause}")]
    Listen { process: usize, address: String, cause: std::io::Error },
    #[error("cannot start the timely cluster: {0}")]
    Timely(String),
}

/// The exit code for a failed run: [`EXIT_CLUSTER`] when a [`ClusterError`] is its cause, else 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|e| e.downcast_ref::<ClusterError>().is_some()) {
        EXIT_CLUSTER
    } else {
        1
    }
}

/// `timely::execute`, with the cluster connected by [`connect`] (for a `Cluster` configuration)
/// and a peer's loss made a one-line exit (see the module documentation).
pub fn execute<T, F>(
    config: timely::Config,
    startup_timeout: Option<Duration>,
    func: F,
) -> Result<WorkerGuards<T>, ClusterError>
where
    T: Send + 'static,
    F: Fn(&mut Worker) -> T + Send + Sync + 'static,
{
    install_exit_hook();
    let timely::Config { communication, worker } = config;
    let timely::CommunicationConfig::Cluster { threads, process, addresses, report: _, zerocopy } =
        communication
    else {
        let config = timely::Config { communication, worker };
        return timely::execute(config, func).map_err(ClusterError::Timely);
    };
    *ADDRESSES.lock().unwrap_or_else(|e| e.into_inner()) = addresses.clone();
    let sockets = connect(&addresses, process, startup_timeout)?;
    let hooks = Hooks::default();
    let allocators = if zerocopy {
        ProcessBuilder::new_bytes_vector(threads, hooks.refill.clone(), hooks.spill.clone())
    } else {
        ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone())
    };
    let (builders, guard) = initialize_networking_from_sockets(allocators, sockets, process, threads, hooks)
        .map_err(|e| ClusterError::Timely(format!("cannot start the communication threads: {e}")))?;
    let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
    timely::execute::execute_from(builders, Box::new(guard), worker, func).map_err(ClusterError::Timely)
}

/// Connects this process (`process`, an index into `addresses`) to every other: sockets in
/// index order, `None` at `process`. Waits at most `timeout` (`None`: forever) for all of them.
pub fn connect(
    addresses: &[String],
    process: usize,
    timeout: Option<Duration>,
) -> Result<Vec<Option<TcpStream>>, ClusterError> {
    let started = Instant::now();
    let expired = || timeout.is_some_and(|t| started.elapsed() >= t);
    let processes = addresses.len();
    let mut sockets: Vec<Option<TcpStream>> = (0..processes).map(|_| None).collect();
    let listeners = if process + 1 < processes { listen(&addresses[process], process)? } else { Vec::new() };
    let mut last_error: Vec<Option<String>> = vec![None; processes];
    let mut last_log = Instant::now();
    loop {
        // Connect to the processes before this one.
        for peer in 0..process {
            if sockets[peer].is_some() {
                continue;
            }
            match dial(&addresses[peer], process) {
                Ok(stream) => {
                    tracing::info!(peer, address = %addresses[peer], "connected to cluster peer");
                    sockets[peer] = Some(stream);
                }
                Err(e) => last_error[peer] = Some(e.to_string()),
            }
        }
        // Accept the processes after this one.
        for listener in &listeners {
            while let Some((stream, from)) = accept(listener) {
                match handshake(stream, process, processes) {
                    Ok((peer, stream)) if sockets[peer].is_none() => {
                        tracing::info!(peer, %from, "cluster peer connected");
                        sockets[peer] = Some(stream);
                    }
                    Ok((peer, _)) => {
                        tracing::warn!(peer, %from, "a second connection claims to be cluster process {peer}; ignored")
                    }
                    Err(e) => tracing::warn!(%from, "ignored a connection that is not a cluster peer: {e}"),
                }
            }
        }
        let missing: Vec<usize> = (0..processes).filter(|&p| p != process && sockets[p].is_none()).collect();
        if missing.is_empty() {
            for (peer, socket) in sockets.iter().enumerate() {
                if let Some(Err(e)) = socket.as_ref().map(detect_silent_loss) {
                    tracing::warn!(peer, "cannot set TCP keepalive on the cluster connection: {e}");
                }
            }
            return Ok(sockets);
        }
        if expired() {
            let missing = missing
                .into_iter()
                .map(|p| match &last_error[p] {
                    Some(e) => format!("process {p} ({}): {e}", addresses[p]),
                    None => format!("process {p} ({}) never connected", addresses[p]),
                })
                .collect();
            return Err(ClusterError::StartupTimeout { waited: started.elapsed(), missing });
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(?missing, "waiting for cluster peers");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Binds every address of `address` (timely allows several, separated by whitespace).
fn listen(address: &str, process: usize) -> Result<Vec<TcpListener>, ClusterError> {
    address
        .split_whitespace()
        .map(|a| {
            let listener = TcpListener::bind(a).and_then(|l| l.set_nonblocking(true).map(|()| l));
            listener.map_err(|cause| ClusterError::Listen { process, address: a.to_owned(), cause })
        })
        .collect()
}

/// One attempt to connect to `address` and introduce ourselves as `process`.
fn dial(address: &str, process: usize) -> std::io::Result<TcpStream> {
    // The last of several listening addresses, as timely does.
    let address = address.split_whitespace().last().unwrap_or(address);
    let mut last = std::io::Error::new(ErrorKind::NotFound, "the address resolves to nothing");
    for resolved in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&resolved, Duration::from_secs(1)) {
            Ok(mut stream) => {
                stream.set_nodelay(true)?;
                stream.write_all(&(process as u64).to_be_bytes())?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept() {
        Ok(accepted) => Some(accepted),
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(e) => {
            tracing::warn!("accepting a cluster connection: {e}");
            None
        }
    }
}

/// Reads the index a connecting peer sends; it must be one of the processes after `process`.
fn handshake(mut stream: TcpStream, process: usize, processes: usize) -> std::io::Result<(usize, TcpStream)> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut index = [0u8; 8];
    stream.read_exact(&mut index)?;
    let peer = u64::from_be_bytes(index);
    if peer <= process as u64 || peer >= processes as u64 {
        let message = format!("it introduced itself as process {peer}");
        return Err(std::io::Error::new(ErrorKind::InvalidData, message));
    }
    stream.set_read_timeout(None)?;
    stream.set_nodelay(true)?;
    Ok((peer as usize, stream))
}

/// Makes a peer whose host vanished without closing its connections (power loss, a network
/// partition) a broken connection too, which then ends the process like any lost peer: keepalive
/// probes after 10 s of silence (3 unanswered, 5 s apart), and at most 30 s for sent data to be
/// acknowledged. A peer that is alive but slow still acknowledges (its kernel does), so it is
/// not mistaken for a lost one. Without these, TCP waits about 15 minutes, or forever when idle.
#[cfg(target_os = "linux")]
fn detect_silent_loss(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: a valid socket, and a pointer to a c_int that outlives the call, with its size.
        let result = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)?;
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 30_000)
}

#[cfg(not(target_os = "linux"))]
fn detect_silent_loss(_stream: &TcpStream) -> std::io::Result<()> {
    Ok(())
}

/// The cluster's addresses, for the message about a lost peer.
static ADDRESSES: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Set by the first thread that reports a lost peer or a failed worker; later panics stay quiet.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Installs (once) a panic hook that turns timely's communication panics into one line on stderr
/// and exit code [`EXIT_CLUSTER`], and a panicking worker into one line and [`EXIT_WORKER_FAILED`].
/// Other panics go to the previous hook as before.
///
/// A worker that panics would otherwise leave the other workers of its process waiting for its
/// progress forever: the run would hang instead of failing.
fn install_exit_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if EXITING.load(Ordering::SeqCst) {
                park_forever();
            }
            if let Some((peer, cause)) = peer_loss(name, message) {
                claim_the_exit();
                let address = ADDRESSES
                    .lock()
                    .ok()
                    .and_then(|a| a.get(peer).cloned())
                    .unwrap_or_else(|| "address unknown".to_owned());
                eprintln!("{}", peer_lost_message(peer, &address, cause));
                std::process::exit(EXIT_CLUSTER.into());
            }
            let Some(worker) = name.strip_prefix("timely:work-") else { return previous(info) };
            // A lost peer makes workers panic too, and its communication thread's report (exit
            // 75, restart the cluster) is the right one: give it a moment to come first.
            std::thread::sleep(Duration::from_millis(200));
            claim_the_exit();
            let location =
                info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
            eprintln!("{}", worker_failed_message(worker, message, &location));
            std::process::exit(EXIT_WORKER_FAILED.into());
        }));
    });
}

/// Makes this thread the one that reports the failure and exits; if another thread already is,
/// this one waits for the exit (the rest is its echo).
fn claim_the_exit() {
    if EXITING.swap(true, Ordering::SeqCst) {
        park_forever();
    }
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// The one line for a worker that panicked: its index, the panic's message on one line, and
/// where it was raised.
fn worker_failed_message(worker: &str, message: &str, location: &str) -> String {
    format!("millstream: error: worker {worker} failed: {}{location}", crate::one_line(message))
}

/// A panic of timely's communication thread for peer N (`timely:recv-N`, `timely:send-N`):
/// the peer's index and what failed.
fn peer_loss<'a>(thread: &str, message: &'a str) -> Option<(usize, &'a str)> {
    let peer = thread.strip_prefix("timely:recv-").or_else(|| thread.strip_prefix("timely:send-"))?;
    let cause = message.strip_prefix("timely communication error: ")?;
    Some((peer.parse().ok()?, cause))
}

fn peer_lost_message(peer: usize, address: &str, cause: &str) -> String {
    format!(
        "millstream: fatal: cluster peer process {peer} ({address}) is gone: {cause}; exiting \
         (code {EXIT_CLUSTER}) so that the supervisor restarts the cluster from the last checkpoint"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_worker_is_one_line() {
        let line = worker_failed_message("1", "Attempted to delay\n  a capability", " (at a.rs:3)");
        assert_eq!(line, "millstream: error: worker 1 failed: Attempted to delay a capability (at a.rs:3)");
    }

    #[test]
    fn recognises_timely_communication_panics() {
        let recv = peer_loss("timely:recv-1", "timely communication error: reading data: socket closed");
        assert_eq!(recv, Some((1, "reading data: socket closed")));
        let send = peer_loss("timely:send-12", "timely communication error: flushing writer: Broken pipe");
        assert_eq!(send, Some((12, "flushing writer: Broken pipe")));
        assert_eq!(peer_loss("timely:work-0", "MergeQueue poisoned."), None);
        assert_eq!(peer_loss("timely:recv-1", "index out of bounds"), None);
        assert_eq!(peer_loss("main", "timely communication error: x"), None);
    }

    #[test]
    fn the_message_names_the_peer_and_the_cure() {
        let line = peer_lost_message(1, "10.0.0.2:7000", "reading data: socket closed");
        assert!(line.contains("cluster peer process 1 (10.0.0.2:7000) is gone: reading data: socket closed"));
        assert!(line.contains("code 75"));
        assert!(!line.contains('\n'));
    }

    #[test]
    fn three_processes_connect_and_stray_connections_are_ignored() {
        let ports: Vec<u16> =
            (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let start = |process: usize| {
            let addresses = addresses.clone();
            std::thread::spawn(move || connect(&addresses, process, Some(Duration::from_secs(20))))
        };
        let mut handles = vec![start(0)];
        // Before its peers, process 0 hears from a probe that says nothing and from a client
        // that claims an index the cluster does not have.
        let started = Instant::now();
        let probe = loop {
            match TcpStream::connect(&addresses[0]) {
                Ok(stream) => break stream,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("process 0 does not listen: {e}"),
            }
        };
        drop(probe);
        let mut liar = TcpStream::connect(&addresses[0]).unwrap();
        liar.write_all(&7u64.to_be_bytes()).unwrap();
        handles.extend([start(1), start(2)]);
        for (process, handle) in handles.into_iter().enumerate() {
            let sockets = handle.join().unwrap().unwrap();
            for (peer, socket) in sockets.iter().enumerate() {
                assert_eq!(socket.is_some(), peer != process, "process {process}, peer {peer}");
            }
        }
    }

    #[test]
    fn a_peer_that_never_comes_is_named_after_the_timeout() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addresses = vec![format!("127.0.0.1:{port}"), "127.0.0.1:1".to_owned()];
        let started = Instant::now();
        let error = connect(&addresses, 0, Some(Duration::from_millis(500))).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = error.to_string();
        assert!(text.contains("process 1 (127.0.0.1:1) never connected"), "{text}");
        assert_eq!(exit_code(&anyhow::Error::from(error).context("run")), EXIT_CLUSTER);
    }
}
