//! Test harness for millstream: real services for tests, started and removed by the tests.
//!
//! [`TestPostgres`] gives a PostgreSQL server: the one named by `DATABASE_URL` when that is set,
//! else a throwaway cluster (`initdb` + `pg_ctl` from the machine's PostgreSQL) in a temporary
//! directory on a free loopback port, stopped and removed when the value is dropped.
//!
//! ```no_run
//! let pg = millstream_testkit::TestPostgres::start()?;
//! let url = pg.create_database("my_test")?; // an empty database of its own
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! PostgreSQL refuses to run as root. When the tests run as root (as on this project's machines),
//! `initdb`, `pg_ctl` and so `postgres` run as the unprivileged user `nobody` (through `runuser`,
//! or `su` where there is no `runuser`), and the temporary directory is handed to that user.
//!
//! [`TestKafka`] gives a Kafka-protocol broker (tansu) in a temporary directory on a free
//! loopback port, with helpers to create topics, produce, and read topics back (see [`kafka`]).
//!
//! [`TestS3`] gives an S3-compatible server (s3s-fs) in a temporary directory on a free loopback
//! port, with a fresh access key and secret, and a helper to create buckets (see [`s3`]).

pub mod kafka;
mod process;
pub mod s3;
pub mod tls;

pub use kafka::{ConsumedRecord, TestKafka, TestRecord};
pub use s3::TestS3;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::process::{free_port, log_tail};

/// The superuser of a throwaway cluster (trust authentication: no password).
pub const USER: &str = "postgres";

/// The unprivileged account that runs PostgreSQL when the tests run as root.
const UNPRIVILEGED_USER: &str = "nobody";

/// A PostgreSQL server for tests: DATABASE_URL when set, else a fresh cluster (initdb + pg_ctl)
/// in a temporary directory on a free loopback port, stopped and removed on drop.
pub struct TestPostgres {
    server: Server,
}

enum Server {
    /// Given by `DATABASE_URL`: used as it is, never stopped.
    External { url: String },
    /// A cluster of our own.
    Local(Cluster),
}

struct Cluster {
    /// The temporary directory: `data/` (the cluster), `postgres.log`, and the unix socket.
    /// Removed when dropped, after [`Drop for TestPostgres`] has stopped the server.
    dir: tempfile::TempDir,
    port: u16,
    /// The folder holding `initdb` and `pg_ctl`.
    bin: PathBuf,
    /// How to run PostgreSQL's programs as a non-root user, when we are root.
    run_as: Option<RunAs>,
}

#[derive(Clone, Debug)]
enum RunAs {
    Runuser(String),
    Su(String),
}

impl TestPostgres {
    /// Uses `DATABASE_URL` when set (and not empty); otherwise creates and starts a throwaway
    /// cluster. Fails with a clear error when `initdb`/`pg_ctl` are missing.
    pub fn start() -> Result<Self> {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.trim().is_empty()) {
            return Ok(TestPostgres { server: Server::External { url } });
        }
        Ok(TestPostgres { server: Server::Local(Cluster::start()?) })
    }

    /// One server shared by every caller in this process while any of them holds it: the first
    /// call starts it, the last drop stops it. Tests that stop or restart the server must use
    /// [`TestPostgres::start`] instead. Isolate tests with [`TestPostgres::create_database`].
    pub fn shared() -> Result<Arc<Self>> {
        static SHARED: Mutex<Weak<TestPostgres>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pg) = slot.upgrade() {
            return Ok(pg);
        }
        let pg = Arc::new(Self::start()?);
        *slot = Arc::downgrade(&pg);
        Ok(pg)
    }

    /// `postgres://USER@127.0.0.1:PORT/postgres` for a throwaway cluster (trust auth, so no
    /// password), or `DATABASE_URL` as given.
    pub fn url(&self) -> String {
        match &self.server {
            Server::External { url } => url.clone(),
            Server::Local(cluster) => cluster.url("postgres"),
        }
    }

    /// Whether the server comes from `DATABASE_URL` (it can then not be stopped or restarted).
    pub fn is_external(&self) -> bool {
        matches!(self.server, Server::External { .. })
    }

    /// Creates an empty database `name` and returns its url. A database of that name left over
    /// from an earlier run (on a `DATABASE_URL` server) is dropped first.
    ///
    /// `name` must be a plain identifier: ASCII letters, digits and `_`, at most 63 bytes.
    pub fn create_database(&self, name: &str) -> Result<String> {
        if name.is_empty() || name.len() > 63 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            bail!("database name {name:?} is not a plain identifier (ASCII letters, digits, _)");
        }
        let admin_url = self.url();
        // Two queries: DROP/CREATE DATABASE refuse to run in the implicit transaction of a
        // multi-statement query.
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let create = format!("CREATE DATABASE \"{name}\" TEMPLATE template0");
        execute_blocking(&admin_url, &[&drop, &create])
            .with_context(|| format!("cannot create test database {name}"))?;
        match &self.server {
            Server::Local(cluster) => Ok(cluster.url(name)),
            Server::External { url } => with_database(url, name),
        }
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): a crash, for fault tests.
    pub fn stop_immediate(&self) -> Result<()> {
        self.cluster("stop")?.stop("immediate")
    }

    /// Turns TLS on with a certificate for `localhost` and `127.0.0.1` signed by a fresh test
    /// CA (made with the `openssl` command), logs connections (so tests can see whether a
    /// client used TLS), restarts, and returns the CA certificate's path: the root to trust
    /// for `sslmode=verify-full`.
    pub fn enable_tls(&self) -> Result<PathBuf> {
        let cluster = self.cluster("enable TLS on")?;
        let data = cluster.data_path();
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        let (ca_cert, made_cert, made_key) = crate::tls::make_certificates(cluster.dir.path())?;
        std::fs::copy(&made_cert, &cert)?;
        std::fs::copy(&made_key, &key)?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        if cluster.run_as.is_some() {
            let (uid, gid) = user_ids(UNPRIVILEGED_USER)?;
            for path in [&cert, &key] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("cannot hand {} to {UNPRIVILEGED_USER}", path.display()))?;
            }
        }
        append(&data.join("postgresql.conf"), "\nssl = on\nlog_connections = on\n")?;
        cluster.stop("fast")?;
        cluster.pg_ctl_start()?;
        Ok(ca_cert)
    }

    /// The server's log so far (connections are logged once TLS is enabled).
    pub fn log(&self) -> Result<String> {
        let cluster = self.cluster("read the log of")?;
        Ok(std::fs::read_to_string(cluster.log_path())?)
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&self) -> Result<()> {
        self.cluster("restart")?.pg_ctl_start()
    }

    fn cluster(&self, what: &str) -> Result<&Cluster> {
        match &self.server {
            Server::Local(cluster) => Ok(cluster),
            Server::External { .. } => {
                bail!("cannot {what} the PostgreSQL server given by DATABASE_URL (unset it for a throwaway one)")
            }
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Server::Local(cluster) = &self.server {
            // Errors are ignored: the server may already be stopped (fault tests).
            let _ = cluster.stop("immediate");
        }
    }
}

impl std::fmt::Debug for TestPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.server {
            Server::External { .. } => f.write_str("TestPostgres(DATABASE_URL)"),
            Server::Local(cluster) => {
                write!(f, "TestPostgres(127.0.0.1:{}, {})", cluster.port, cluster.dir.path().display())
            }
        }
    }
}

impl Cluster {
    fn start() -> Result<Self> {
        let bin = find_bin_dir()?;
        let run_as = if running_as_root() { Some(run_as_unprivileged()?) } else { None };
        // The unix socket path must fit in 107 bytes, and `nobody` must be able to reach the
        // directory: use /tmp unless TMPDIR is short and we are not root.
        let base = std::env::temp_dir();
        let base = if run_as.is_none() && base.as_os_str().len() < 60 { base } else { PathBuf::from("/tmp") };
        let dir = tempfile::Builder::new()
            .prefix("millstream-pg-")
            .tempdir_in(&base)
            .with_context(|| format!("cannot create a temporary directory in {}", base.display()))?;
        if run_as.is_some() {
            let (uid, gid) = user_ids(UNPRIVILEGED_USER)?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).with_context(|| {
                format!("cannot hand {} to user {UNPRIVILEGED_USER}", dir.path().display())
            })?;
        }
        let mut cluster = Cluster { dir, port: 0, bin, run_as };
        cluster.initdb()?;
        // A free port is only free until someone takes it: retry on a clash.
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            cluster.write_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let log = std::fs::read_to_string(cluster.log_path()).unwrap_or_default();
                    if !log.contains("could not bind") && !log.contains("already in use") {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no free port")))
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    fn data_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn initdb(&self) -> Result<()> {
        let data = self.data_path();
        let args: Vec<&OsStr> = vec![
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-U"),
            OsStr::new(USER),
            OsStr::new("--auth=trust"),
            OsStr::new("--encoding=UTF8"),
            OsStr::new("--locale=C"),
            OsStr::new("--no-sync"),
        ];
        self.run("initdb", &args)?;
        // Settings for a fast, private, disposable server. `fsync = off` loses nothing when only
        // the server dies (fault tests stop it with `-m immediate`): written WAL is in the
        // kernel's cache. `synchronous_commit` stays on, so a commit that returned is in the WAL.
        let socket_dir = self.dir.path().to_string_lossy().replace('\'', "''");
        let settings = format!(
            "\n# millstream-testkit\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n\
             fsync = off\n\
             full_page_writes = off\n\
             shared_buffers = 32MB\n\
             max_connections = 50\n\
             max_wal_size = 1GB\n"
        );
        append(&data.join("postgresql.conf"), &settings)
    }

    /// Writes the port into `postgresql.auto.conf`, so `pg_ctl start` (and a restart) needs no
    /// options.
    fn write_port(&self) -> Result<()> {
        let path = self.data_path().join("postgresql.auto.conf");
        std::fs::write(&path, format!("port = {}\n", self.port))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let data = self.data_path();
        let log = self.log_path();
        let args: Vec<&OsStr> = vec![
            OsStr::new("start"),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new("60"),
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-l"),
            log.as_os_str(),
        ];
        self.run("pg_ctl", &args).map(|_| ()).map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            e.context(format!("PostgreSQL did not start on port {}; log:\n{}", self.port, log_tail(&log, 10)))
        })
    }

    fn stop(&self, mode: &str) -> Result<()> {
        let data = self.data_path();
        let args: Vec<&OsStr> = vec![
            OsStr::new("stop"),
            OsStr::new("-w"),
            OsStr::new("-m"),
            OsStr::new(mode),
            OsStr::new("-D"),
            data.as_os_str(),
        ];
        self.run("pg_ctl", &args).map(|_| ())
    }

    /// Runs one of PostgreSQL's programs (as the unprivileged user when we are root), in the
    /// temporary directory, and fails with its output when it fails.
    fn run(&self, program: &str, args: &[&OsStr]) -> Result<Output> {
        let path = self.bin.join(program);
        let mut command = match &self.run_as {
            None => {
                let mut c = Command::new(&path);
                c.args(args);
                c
            }
            Some(RunAs::Runuser(user)) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path).args(args);
                c
            }
            Some(RunAs::Su(user)) => {
                let mut line = OsString::from("exec ");
                line.push(shell_quote(path.as_os_str()));
                for arg in args {
                    line.push(" ");
                    line.push(shell_quote(arg));
                }
                let mut c = Command::new("su");
                c.args(["-s", "/bin/sh", user, "-c"]).arg(line);
                c
            }
        };
        command.current_dir(self.dir.path()).stdin(std::process::Stdio::null());
        let output = command.output().with_context(|| format!("cannot run {}", path.display()))?;
        if !output.status.success() {
            bail!(
                "{} {} failed ({}): {}{}",
                program,
                args.first().map(|a| a.to_string_lossy()).unwrap_or_default(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(output)
    }
}

/// Finds the folder with `initdb` and `pg_ctl`: on PATH, else the newest
/// /usr/lib/postgresql/*/bin.
fn find_bin_dir() -> Result<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d)) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        anyhow!(
            "PostgreSQL server programs not found: initdb and pg_ctl are neither on PATH nor in \
             /usr/lib/postgresql/*/bin. Install PostgreSQL's server package (Debian: postgresql), \
             or set DATABASE_URL to a server for tests"
        )
    })
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    match std::fs::metadata("/proc/self") {
        Ok(meta) => meta.uid() == 0,
        Err(_) => command_stdout("id", &["-u"]).map(|uid| uid == "0").unwrap_or(false),
    }
}

/// How to run programs as [`UNPRIVILEGED_USER`]: `runuser` when present, else `su`.
fn run_as_unprivileged() -> Result<RunAs> {
    user_ids(UNPRIVILEGED_USER)?;
    let user = UNPRIVILEGED_USER.to_owned();
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(name).is_file()
            || Path::new("/sbin").join(name).is_file()
    };
    if on_path("runuser") {
        Ok(RunAs::Runuser(user))
    } else if on_path("su") {
        Ok(RunAs::Su(user))
    } else {
        bail!("running as root, and neither runuser nor su is there to run PostgreSQL as {user}")
    }
}

fn user_ids(user: &str) -> Result<(u32, u32)> {
    let uid = command_stdout("id", &["-u", user])?;
    let gid = command_stdout("id", &["-g", user])?;
    Ok((
        uid.parse().with_context(|| format!("bad uid {uid:?} for {user}"))?,
        gid.parse().with_context(|| format!("bad gid {gid:?} for {user}"))?,
    ))
}

fn command_stdout(program: &str, args: &[&str]) -> Result<String> {
    let output =
        Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn shell_quote(arg: &OsStr) -> OsString {
    let text = arg.to_string_lossy();
    OsString::from(format!("'{}'", text.replace('\'', "'\\''")))
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// `url` with its database replaced by `name` (URL form `postgres://…/db?…` or key=value form).
fn with_database(url: &str, name: &str) -> Result<String> {
    let Some(scheme_end) = url.find("://") else {
        // key=value form: a later dbname wins.
        return Ok(format!("{url} dbname={name}"));
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let query_start = rest.find('?').unwrap_or(rest.len());
    let head = &rest[..query_start];
    let host_start = head.rfind('@').map_or(0, |at| at + 1);
    let path_start = head[host_start..].find('/').map_or(head.len(), |p| host_start + p);
    Ok(format!("{}{}/{}{}", &url[..rest_start], &head[..path_start], name, &rest[query_start..]))
}

/// Runs each of `queries` (simple query protocol) on the server at `url`.
fn execute_blocking(url: &str, queries: &[&str]) -> Result<()> {
    let mut config: tokio_postgres::Config = url.parse().context("bad database url")?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.context("cannot connect")?;
        let connection = tokio::spawn(connection);
        for query in queries {
            client.batch_execute(query).await?;
        }
        drop(client);
        let _ = connection.await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        let cases = [
            ("postgres://u@127.0.0.1:5432/postgres", "postgres://u@127.0.0.1:5432/t1"),
            ("postgres://u:p@h:1/db?sslmode=disable", "postgres://u:p@h:1/t1?sslmode=disable"),
            ("postgresql://u:p%2Fq@h", "postgresql://u:p%2Fq@h/t1"),
            ("postgres://h:5432?user=x", "postgres://h:5432/t1?user=x"),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "t1").unwrap(), expected, "{url}");
        }
        assert_eq!(with_database("host=h user=u", "t1").unwrap(), "host=h user=u dbname=t1");
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote(OsStr::new("a b'c")), OsString::from("'a b'\\''c'"));
    }
}
