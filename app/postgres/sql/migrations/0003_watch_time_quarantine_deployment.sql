-- Watch time (docs/stats-table.md), the rows a flush isolates instead of
-- failing on them (docs/exactly-once.md, "Isolated rows"), and the settings a
-- deployment records once (docs/deployment.md).

ALTER TABLE stats ADD COLUMN IF NOT EXISTS watch_ms bigint NOT NULL DEFAULT 0;

-- Counters the flush could not add into `stats`: a sum past bigint, or a
-- Redis key that does not read as a row. Kept exactly (numeric), in the same
-- transaction as the ledger row of their snapshot, until an operator resolves
-- them with `payload-stats quarantine`.
CREATE TABLE IF NOT EXISTS stats_quarantine (
    id              bigserial   PRIMARY KEY,
    time            timestamptz NOT NULL,  -- end of the window
    customer        text,                  -- NULL when the key did not read as a name
    content         text,
    cdn             numeric     NOT NULL DEFAULT 0,
    p2p             numeric     NOT NULL DEFAULT 0,
    sessions        numeric     NOT NULL DEFAULT 0,
    payloads        numeric     NOT NULL DEFAULT 0,
    watch_ms        numeric     NOT NULL DEFAULT 0,
    raw_key         bytea,                 -- the Redis ident and fields, when unreadable
    reason          text        NOT NULL,
    snapshot_ids    text[]      NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    resolution      text
);
CREATE INDEX IF NOT EXISTS stats_quarantine_unresolved
    ON stats_quarantine (id) WHERE resolved_at IS NULL;

-- The settings that fix the Redis key layout and the rows' times; one row.
CREATE TABLE IF NOT EXISTS deployment (
    id              smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    window_seconds  integer     NOT NULL,
    shards          integer     NOT NULL,
    key_prefix      text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
