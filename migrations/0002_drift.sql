-- 0002_drift: drift events and the lineage of retrained models.

-- A drift statistic past its threshold. `event_id` is XXH3-128 of (statistic, subject, window end,
-- model version), so a replay inserts nothing new.
CREATE TABLE drift_events (
    event_id      text PRIMARY KEY,
    asset_id      text NOT NULL,
    sensor_id     text,
    feature       text,
    statistic     text NOT NULL,
    value         double precision NOT NULL,
    threshold     double precision NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    count         bigint NOT NULL,
    model_version text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (sensor_id IS NOT NULL OR feature IS NOT NULL)
);

CREATE INDEX drift_events_asset_id_window_end ON drift_events (asset_id, window_end);

-- Each model version the retrainer made or refused: its parent, why, and how it checked out.
-- Versions uploaded by `millstream train` are not here (they have no parent in the dataflow).
CREATE TABLE model_versions (
    model                         text NOT NULL,
    version                       bigint NOT NULL,
    parent_version                bigint,
    status                        text NOT NULL CHECK (status IN ('serving', 'refused', 'rolled_back')),
    reason                        text NOT NULL,
    effective_from                timestamptz NOT NULL,
    training_rows                 bigint NOT NULL,
    holdback_rows                 bigint NOT NULL,
    holdback_anomaly_rate         double precision NOT NULL,
    parent_holdback_anomaly_rate  double precision NOT NULL,
    silhouette                    double precision,
    published                     boolean NOT NULL,
    created_at                    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version, status)
);
