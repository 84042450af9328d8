//! PostgreSQL and TimescaleDB output.
//!
//! The schema lives in the workspace's `migrations/` folder as numbered SQL files, embedded in the
//! binary and applied by [`migrate::migrate`]: TimescaleDB hypertables with compression and
//! retention when the extension can be used, plain PostgreSQL tables with BRIN time indexes
//! otherwise.

pub mod checkpoint;
pub mod connect;
pub mod migrate;
pub mod writer;
