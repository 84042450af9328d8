-- 0003_checkpoints: operator state and source positions, committed by each worker in the same
-- transaction as its rows. Replaces the placeholders of 0001, which nothing ever wrote.

DROP TABLE IF EXISTS source_offsets;
DROP TABLE IF EXISTS operator_checkpoints;

-- How far each worker of a run (a generation) has checkpointed: every boundary up to
-- `covered_to` is complete for that worker. A generation whose `workers` rows all exist is
-- restorable at the smallest `covered_to`.
CREATE TABLE checkpoint_workers (
    generation bigint NOT NULL,
    worker     integer NOT NULL,
    workers    integer NOT NULL,
    covered_to bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation, worker)
);

-- One component's state on one worker, valid at every boundary from `from_boundary` to
-- `to_boundary` (event-time milliseconds). A component with no part at a covered boundary had
-- no state there.
CREATE TABLE checkpoint_parts (
    generation    bigint NOT NULL,
    worker        integer NOT NULL,
    component     text NOT NULL,
    from_boundary bigint NOT NULL,
    to_boundary   bigint NOT NULL,
    state         bytea NOT NULL,
    PRIMARY KEY (generation, worker, component, from_boundary)
);
