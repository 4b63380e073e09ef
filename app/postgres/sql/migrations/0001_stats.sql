-- The stats table (docs/stats-table.md) and the flush ledger.

CREATE TABLE IF NOT EXISTS stats (
    time      timestamptz NOT NULL,  -- end of the window
    customer  text        NOT NULL,
    content   text        NOT NULL,
    cdn       bigint      NOT NULL DEFAULT 0,
    p2p       bigint      NOT NULL DEFAULT 0,
    sessions  bigint      NOT NULL DEFAULT 0,
    payloads  bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (time, customer, content)
);

-- One row per Redis snapshot written into stats. Inserted in the same
-- transaction as the rows, so a snapshot replayed after a crash is skipped.
CREATE TABLE IF NOT EXISTS flush_ledger (
    snapshot_id  text        PRIMARY KEY,
    window_end   timestamptz NOT NULL,
    flushed_at   timestamptz NOT NULL DEFAULT now()
);
