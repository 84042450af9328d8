//! Schema migrations: numbered SQL files from the workspace's `migrations/` folder, embedded in
//! the binary, applied in order and recorded with their SHA-256 in `schema_migrations`.
//!
//! - A session-level advisory lock ([`LOCK_KEY`]) serialises concurrent `migrate` calls, so two
//!   processes starting at once do not race: the second waits, then finds nothing to do.
//! - Each pending migration runs in its own transaction together with its `schema_migrations`
//!   row: it is applied whole or not at all. (So a migration cannot use statements that refuse
//!   to run in a transaction, such as `CREATE INDEX CONCURRENTLY`.)
//! - A recorded migration whose checksum differs from the embedded file is refused: released
//!   migrations are never edited, a new numbered one is added instead.
//! - A database carrying a version this binary does not know (written by a newer millstream) is
//!   refused, before anything is applied.
//!
//! To add a migration: put `NNNN_name.sql` in `migrations/` and a line in [`MIGRATIONS`]; a unit
//! test fails until both agree.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// One embedded migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The `NNNN` of the file name.
    pub version: i32,
    /// The file name between `NNNN_` and `.sql`.
    pub name: &'static str,
    /// The file's text.
    pub sql: &'static str,
}

impl Migration {
    /// `NNNN_name`, as the file is named (without `.sql`).
    pub fn id(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }

    /// Lower-case hex SHA-256 of the SQL text, as recorded in `schema_migrations.checksum`.
    pub fn checksum(&self) -> String {
        let digest = Sha256::digest(self.sql.as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in digest.iter() {
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }
}

/// Every migration of this binary, in order. Must list exactly the files in `migrations/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial", sql: include_str!("../../../migrations/0001_initial.sql") },
    Migration { version: 2, name: "drift", sql: include_str!("../../../migrations/0002_drift.sql") },
    Migration {
        version: 3,
        name: "checkpoints",
        sql: include_str!("../../../migrations/0003_checkpoints.sql"),
    },
];

/// The key of the advisory lock held while migrating (the bytes of "millstrm").
pub const LOCK_KEY: i64 = 0x6d69_6c6c_7374_726d;

const CREATE_SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// The migrations applied by this call (`NNNN_name`), in order.
    pub applied: Vec<String>,
    /// How many migrations were applied before this call.
    pub already: usize,
}

/// Why migrating failed. No message carries a password: urls are shown through [`redact_url`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    #[error("invalid database url {url}: {detail}")]
    InvalidUrl { url: String, detail: String },
    #[error("cannot connect to PostgreSQL at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error(
        "migration {migration} was changed after it was applied: checksum {in_database} in the \
         database, {in_binary} in this binary"
    )]
    Changed { migration: String, in_database: String, in_binary: String },
    #[error("database has migration {version:04} which this millstream does not know; upgrade millstream")]
    Unknown { version: i32, name: String },
    #[error("migration {migration} failed: {error}")]
    Apply { migration: String, error: tokio_postgres::Error },
    #[error("{context}: {error}")]
    Database { context: &'static str, error: tokio_postgres::Error },
    #[error("cannot start a runtime for migrations: {0}")]
    Runtime(std::io::Error),
}

fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> MigrateError {
    move |error| MigrateError::Database { context, error }
}

/// Applies every pending migration, under the advisory lock. Applying again is a no-op.
pub async fn migrate(client: &mut Client) -> Result<MigrationReport, MigrateError> {
    client
        .batch_execute(&format!("SELECT pg_advisory_lock({LOCK_KEY})"))
        .await
        .map_err(db("cannot take the migration lock"))?;
    let result = migrate_locked(client).await;
    // A failed migration's transaction was rolled back when dropped; the unlock follows it on
    // the same connection. (If the connection is gone, so is the lock.)
    let unlocked = client
        .batch_execute(&format!("SELECT pg_advisory_unlock({LOCK_KEY})"))
        .await
        .map_err(db("cannot release the migration lock"));
    let report = result?;
    unlocked?;
    Ok(report)
}

async fn migrate_locked(client: &mut Client) -> Result<MigrationReport, MigrateError> {
    client.batch_execute(CREATE_SCHEMA_MIGRATIONS).await.map_err(db("cannot create schema_migrations"))?;
    let rows = client
        .query("SELECT version, name, checksum FROM schema_migrations ORDER BY version", &[])
        .await
        .map_err(db("cannot read schema_migrations"))?;
    let mut recorded = Vec::with_capacity(rows.len());
    for row in &rows {
        let version: i32 = row.try_get(0).map_err(db("cannot read schema_migrations"))?;
        let name: String = row.try_get(1).map_err(db("cannot read schema_migrations"))?;
        let checksum: String = row.try_get(2).map_err(db("cannot read schema_migrations"))?;
        recorded.push((version, name, checksum));
    }
    check_recorded(&recorded)?;

    let mut report = MigrationReport { applied: Vec::new(), already: recorded.len() };
    for migration in MIGRATIONS {
        if recorded.iter().any(|(version, _, _)| *version == migration.version) {
            continue;
        }
        let apply = |error| MigrateError::Apply { migration: migration.id(), error };
        let transaction = client.transaction().await.map_err(apply)?;
        transaction.batch_execute(migration.sql).await.map_err(apply)?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&migration.version, &migration.name, &migration.checksum()],
            )
            .await
            .map_err(apply)?;
        transaction.commit().await.map_err(apply)?;
        tracing::info!(migration = %migration.id(), "applied database migration");
        report.applied.push(migration.id());
    }
    Ok(report)
}

/// Refuses versions this binary does not know (first: the fix is to upgrade), then recorded
/// checksums that differ from the embedded files.
fn check_recorded(recorded: &[(i32, String, String)]) -> Result<(), MigrateError> {
    if let Some((version, name, _)) =
        recorded.iter().find(|(version, _, _)| !MIGRATIONS.iter().any(|m| m.version == *version))
    {
        return Err(MigrateError::Unknown { version: *version, name: name.clone() });
    }
    for (version, _, checksum) in recorded {
        let Some(migration) = MIGRATIONS.iter().find(|m| m.version == *version) else { continue };
        let expected = migration.checksum();
        if *checksum != expected {
            return Err(MigrateError::Changed {
                migration: migration.id(),
                in_database: checksum.clone(),
                in_binary: expected,
            });
        }
    }
    Ok(())
}

/// Connects to `url`, migrates, disconnects. Builds its own current-thread
/// runtime, so it must not be called from inside a tokio runtime.
pub fn migrate_blocking(url: &str) -> Result<MigrationReport, MigrateError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(MigrateError::Runtime)?;
    runtime.block_on(async {
        let mut client = connect(url).await?;
        migrate(&mut client).await
    })
}

/// Connects (TLS as `sslmode` says, see [`super::connect`]) and drives the connection on the
/// current runtime. A connect timeout of 10 s applies unless the url sets `connect_timeout`.
async fn connect(url: &str) -> Result<Client, MigrateError> {
    let secrets = secrets_of(url);
    let shown = redact_url(url);
    let options = super::connect::ConnectOptions::from_url(url).map_err(|e| MigrateError::InvalidUrl {
        url: shown.clone(),
        detail: scrub(&e.to_string(), &secrets),
    })?;
    options
        .connect()
        .await
        .map_err(|e| MigrateError::Connect { url: shown, detail: scrub(&e.to_string(), &secrets) })
}

/// `url` fit to show: the password of a `postgres://user:password@…` url, and any `password`
/// parameter (url query or `key=value` form), replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) else {
        return redact_key_values(url);
    };
    let scheme = &url[..url.len() - rest.len()];
    let mut out = String::from(scheme);
    // As tokio-postgres parses it: the credentials run to the first '@', the password from the
    // first ':' in them.
    let after_credentials = match rest.find('@') {
        Some(at) => {
            let credentials = &rest[..at];
            match credentials.find(':') {
                Some(colon) => {
                    out.push_str(&credentials[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(credentials),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    match after_credentials.find('?') {
        Some(question) => {
            out.push_str(&after_credentials[..=question]);
            let params: Vec<String> = after_credentials[question + 1..]
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(after_credentials),
    }
    out
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("pass") || key.contains('%')
}

/// `key=value` connection strings: values are single-quoted (with `\` escapes) or run to the
/// next whitespace. Anything that does not parse is hidden whole if it mentions a password.
fn redact_key_values(s: &str) -> String {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim_end();
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        let value_part = rest[eq + 1..].trim_start();
        let (value, remainder) = if let Some(quoted) = value_part.strip_prefix('\'') {
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else { break };
            (&value_part[..end + 2], &quoted[end + 1..])
        } else {
            let end = value_part.find(char::is_whitespace).unwrap_or(value_part.len());
            (&value_part[..end], &value_part[end..])
        };
        out.push(if is_secret_key(key) { format!("{key}=***") } else { format!("{key}={value}") });
        rest = remainder.trim_start();
    }
    if !rest.is_empty() {
        if rest.to_ascii_lowercase().contains("pass") {
            out.push("…".to_owned());
        } else {
            out.push(rest.to_owned());
        }
    }
    out.join(" ")
}

/// The password as written in `url` and as parsed, to scrub from error texts.
fn secrets_of(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Ok(config) = url.parse::<tokio_postgres::Config>() {
        if let Some(password) = config.get_password() {
            secrets.push(String::from_utf8_lossy(password).into_owned());
        }
    }
    if let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) {
        if let Some((_, password)) = rest.split_once('@').and_then(|(creds, _)| creds.split_once(':')) {
            secrets.push(password.to_owned());
        }
    }
    secrets.retain(|s| !s.is_empty());
    secrets
}

fn scrub(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded list and the files in migrations/ must agree: same names, same order, same
    /// text. Fails when a file was added without a line in MIGRATIONS (or the reverse).
    #[test]
    fn embedded_list_matches_the_migrations_folder() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations/ folder")
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS.iter().map(|m| format!("{}.sql", m.id())).collect();
        assert_eq!(files, embedded, "migrations/ and MIGRATIONS in {} differ", file!());
        for migration in MIGRATIONS {
            let text = std::fs::read_to_string(dir.join(format!("{}.sql", migration.id()))).unwrap();
            assert_eq!(text, migration.sql, "{} embeds another file", migration.id());
            assert!(!migration.name.is_empty() && !migration.name.contains('.'));
        }
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version, "versions must increase");
        }
        assert!(MIGRATIONS.first().is_some_and(|m| m.version == 1));
    }

    #[test]
    fn every_file_in_the_folder_is_named_nnnn_name() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let (number, rest) = name.split_at(4.min(name.len()));
            assert!(
                number.bytes().all(|b| b.is_ascii_digit())
                    && rest.starts_with('_')
                    && rest.ends_with(".sql")
                    && rest.len() > ".sql".len() + 1,
                "{name} is not NNNN_name.sql"
            );
        }
    }

    #[test]
    fn checksum_is_sha256_hex() {
        let migration = Migration { version: 1, name: "x", sql: "abc" };
        assert_eq!(migration.checksum(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(migration.id(), "0001_x");
    }

    #[test]
    fn refuses_unknown_versions_then_changed_checksums() {
        let good = (1, "initial".to_owned(), MIGRATIONS[0].checksum());
        assert!(check_recorded(std::slice::from_ref(&good)).is_ok());
        let changed = (1, "initial".to_owned(), "x".to_owned());
        let error = check_recorded(std::slice::from_ref(&changed)).unwrap_err().to_string();
        assert!(
            error.starts_with(
                "migration 0001_initial was changed after it was applied: checksum x in the database, "
            ),
            "{error}"
        );
        let unknown = (7, "future".to_owned(), "y".to_owned());
        let error = check_recorded(&[changed, unknown]).unwrap_err().to_string();
        assert_eq!(
            error,
            "database has migration 0007 which this millstream does not know; upgrade millstream"
        );
    }

    #[test]
    fn redacts_passwords_from_urls() {
        let cases = [
            ("postgres://u:s3cret@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgresql://u@h/db", "postgresql://u@h/db"),
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://u:s3:c@r/et@h/db", "postgres://u:***@r/et@h/db"),
            (
                "postgres://h/db?user=u&password=s3cret&sslmode=require",
                "postgres://h/db?user=u&password=***&sslmode=require",
            ),
            ("host=h password=s3cret user=u", "host=h password=*** user=u"),
            ("host=h password = 's3 \\' cret' user=u", "host=h password=*** user=u"),
            ("host=h password='unterminated s3cret", "host=h …"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    #[test]
    fn connection_errors_never_show_the_password() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for url in [
            "postgres://millstream:s3cret@127.0.0.1:1/db",
            "postgres://millstream:s3cret@127.0.0.1:notaport/db",
            "postgres://millstream:s3cret@127.0.0.1:1/db?sslmode=bogus",
            "host=127.0.0.1 port=1 user=millstream password=s3cret",
            "host=127.0.0.1 port=1 password='s3cret",
        ] {
            let error = runtime.block_on(connect(url)).map(|_| ()).unwrap_err();
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }
}
