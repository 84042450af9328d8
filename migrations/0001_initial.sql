-- 0001_initial: the schema of millstream's PostgreSQL / TimescaleDB sink.
--
-- Applied by `millstream migrate` (sinks/src/postgres/migrate.rs) inside one transaction, and
-- recorded in schema_migrations with the SHA-256 of this file. Never edit this file once it has
-- been released: add a new numbered migration instead (an edited file is refused by checksum).
--
-- Two paths:
--   * TimescaleDB, when the extension is installed in the database or available and preloaded:
--     hypertables on readings and readings_1m, compression and retention policies.
--   * plain PostgreSQL otherwise (the path the tests run live): BRIN indexes on the time columns,
--     which stay tiny and fit data that arrives roughly in time order.

-- The sensor registry: what a sensor measures and its physical range.
CREATE TABLE sensors (
    sensor_id  text PRIMARY KEY,
    asset_id   text NOT NULL,
    kind       text,
    unit       text,
    min_value  double precision,
    max_value  double precision,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (min_value IS NULL OR max_value IS NULL OR min_value <= max_value)
);

CREATE INDEX sensors_asset_id ON sensors (asset_id);

-- Every accepted reading.
--
-- The primary key includes `value` on purpose. The input contract accepts two readings of one
-- sensor at one instant with different values: only an exact repeat (same sensor, ts and value) is
-- a duplicate. Keying on (sensor_id, ts) alone would make the sink's idempotent insert
-- (skip existing keys) silently drop the second, different reading. With the value in the key,
-- a replay after a crash still writes nothing twice.
--
-- `late`: the reading arrived behind the watermark (kept, flagged, not scored).
-- `quality`: bit flags about the reading, 0 = good (reserved for sensor-health work).
CREATE TABLE readings (
    sensor_id text NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    late      boolean NOT NULL DEFAULT false,
    quality   smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (sensor_id, ts, value)
);

-- Per sensor and minute aggregates, maintained incrementally (upserted on every change,
-- including corrections caused by late readings). `minute` is the start of the minute (UTC).
CREATE TABLE readings_1m (
    sensor_id text NOT NULL,
    minute    timestamptz NOT NULL,
    count     bigint NOT NULL,
    mean      double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    stddev    double precision NOT NULL,
    PRIMARY KEY (sensor_id, minute)
);

-- Detected anomalies. `event_id` is XXH3-128 of (kind, detector, sensor, ts), so a replay
-- produces the same id and inserts nothing new.
CREATE TABLE anomalies (
    event_id      text PRIMARY KEY,
    sensor_id     text NOT NULL,
    asset_id      text NOT NULL,
    ts            timestamptz NOT NULL,
    value         double precision NOT NULL,
    score         double precision NOT NULL,
    severity      text NOT NULL,
    detector      text NOT NULL,
    model_version text,
    explanation   text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX anomalies_asset_id_ts ON anomalies (asset_id, ts);

-- Every refused record, with its raw bytes and where it was read.
CREATE TABLE dead_letters (
    -- Deterministic: a hash of the source location and the reason, so a replay of the same
    -- input writes the same id and nothing twice.
    dead_letter_id text PRIMARY KEY,
    reason         text NOT NULL,
    detail         text NOT NULL,
    raw            bytea NOT NULL,
    -- {"file": …, "line": …}, {"simulator": …, "seq": …} or, for Kafka, topic/partition/offset.
    source         jsonb NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_reason ON dead_letters (reason);

-- Reliability: the next offset to read per source partition, committed with the outputs.
CREATE TABLE source_offsets (
    source      text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, partition)
);

-- Reliability: the serialized state of stateful operators per worker, as of `epoch`.
CREATE TABLE operator_checkpoints (
    operator   text NOT NULL,
    worker     integer NOT NULL,
    epoch      bigint NOT NULL,
    state      bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operator, worker)
);

-- Time-series storage: TimescaleDB when it can be used, plain PostgreSQL otherwise.
--
-- CREATE EXTENSION timescaledb fails unless the library is in shared_preload_libraries, so an
-- extension that is merely available (packaged but not preloaded) takes the plain path with a
-- notice instead of failing the migration.
DO $$
DECLARE
    installed boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
    available boolean := EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb');
    preloaded boolean := current_setting('shared_preload_libraries', true) ~ 'timescaledb';
BEGIN
    IF installed OR (available AND preloaded) THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;

        -- Hypertables. Their unique keys contain the time column, as TimescaleDB requires.
        -- (anomalies and dead_letters stay plain tables: they are keyed by id alone and small.)
        PERFORM create_hypertable('readings', 'ts',
            chunk_time_interval => INTERVAL '1 day', if_not_exists => true, migrate_data => true);
        PERFORM create_hypertable('readings_1m', 'minute',
            chunk_time_interval => INTERVAL '7 days', if_not_exists => true, migrate_data => true);

        -- Compression: segments per sensor, ordered by time (every key column is a segmenting
        -- or ordering column, so inserts that skip existing keys keep working on compressed
        -- chunks, TimescaleDB 2.11 and later).
        ALTER TABLE readings SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'sensor_id',
            timescaledb.compress_orderby = 'ts, value'
        );
        ALTER TABLE readings_1m SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'sensor_id',
            timescaledb.compress_orderby = 'minute'
        );
        PERFORM add_compression_policy('readings', INTERVAL '7 days', if_not_exists => true);
        PERFORM add_compression_policy('readings_1m', INTERVAL '30 days', if_not_exists => true);

        -- Retention: raw readings for 90 days, minute aggregates for two years.
        PERFORM add_retention_policy('readings', INTERVAL '90 days', if_not_exists => true);
        PERFORM add_retention_policy('readings_1m', INTERVAL '730 days', if_not_exists => true);
    ELSE
        IF available THEN
            RAISE NOTICE 'timescaledb is available but not preloaded: using plain PostgreSQL tables';
        END IF;

        -- BRIN indexes for time-range scans. The primary keys already serve per-sensor lookups.
        CREATE INDEX readings_ts_brin ON readings USING brin (ts);
        CREATE INDEX readings_1m_minute_brin ON readings_1m USING brin (minute);
    END IF;
END
$$;

-- Time indexes on the plain tables of both paths.
CREATE INDEX anomalies_ts_brin ON anomalies USING brin (ts);
CREATE INDEX dead_letters_received_at_brin ON dead_letters USING brin (received_at);
