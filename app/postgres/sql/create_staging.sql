-- The transaction's partial sums as read from Redis (one row per shard
-- snapshot and pair) or from an import file. Flush rows take the window's
-- time from the default; imported rows carry their own.
CREATE TEMPORARY TABLE flush_staging (
    time      timestamptz NOT NULL DEFAULT %(time)s,
    customer  text   NOT NULL,
    content   text   NOT NULL,
    cdn       bigint NOT NULL,
    p2p       bigint NOT NULL,
    sessions  bigint NOT NULL,
    payloads  bigint NOT NULL,
    watch_ms  bigint NOT NULL
) ON COMMIT DROP
