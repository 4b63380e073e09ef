-- Time partitions for `stats`, the hourly and daily rollups, and ledger
-- retention by window (docs/stats-table.md, "Partitions", "Rollups").
--
-- Runs once, in the migrations' transaction, under their advisory lock. Every
-- step checks what is already there, so running it again changes nothing.

-- One partition per UTC day, named stats_YYYYMMDD, holding the rows whose
-- window end is in [day 00:00Z, next day 00:00Z). Creates the missing ones of
-- `days` and returns how many it created. A partition is created as a plain
-- table, then attached: ATTACH PARTITION takes only a SHARE UPDATE EXCLUSIVE
-- lock on `stats`, so flushes and reads go on meanwhile (CREATE TABLE ...
-- PARTITION OF would lock them out). Concurrent callers serialise on an
-- advisory lock and re-check. There is no DEFAULT partition: a row for a
-- missing day fails loudly instead of landing where retention cannot drop it.
CREATE OR REPLACE FUNCTION stats_ensure_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent    regclass := 'stats'::regclass;
    ns        text := (SELECT quote_ident(nspname) FROM pg_namespace
                       WHERE oid = (SELECT relnamespace FROM pg_class WHERE oid = parent));
    d         date;
    part      text;
    locked    boolean := false;
    created   integer := 0;
BEGIN
    FOR d IN SELECT DISTINCT x FROM unnest(days) AS x WHERE x IS NOT NULL ORDER BY x LOOP
        part := 'stats_' || to_char(d, 'YYYYMMDD');
        IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = parent AND c.relname = part) THEN
            CONTINUE;
        END IF;
        IF NOT locked THEN
            PERFORM pg_advisory_xact_lock(5784671545451954259);  -- "PARTITNS"
            locked := true;
            -- Another caller may have created it while this one waited.
            IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                       WHERE i.inhparent = parent AND c.relname = part) THEN
                CONTINUE;
            END IF;
        END IF;
        EXECUTE format('CREATE TABLE %s.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       ns, part, parent);
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s.%I FOR VALUES FROM (%L) TO (%L)',
                       parent, ns, part,
                       d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'stats'::regclass) = 'r' THEN
        -- An unpartitioned stats (migrations 0001-0003): move every row into a
        -- partitioned table of the same columns. Indexes are built after the
        -- copy, one sorted build per partition, which is faster than
        -- maintaining them row by row.
        ALTER TABLE stats RENAME TO stats_unpartitioned;
        ALTER INDEX stats_pkey RENAME TO stats_unpartitioned_pkey;
        ALTER INDEX IF EXISTS stats_customer_time RENAME TO stats_unpartitioned_customer_time;
        ALTER INDEX IF EXISTS stats_content_time RENAME TO stats_unpartitioned_content_time;
        CREATE TABLE stats (
            time      timestamptz NOT NULL,  -- end of the window
            customer  text        NOT NULL,
            content   text        NOT NULL,
            cdn       bigint      NOT NULL DEFAULT 0,
            p2p       bigint      NOT NULL DEFAULT 0,
            sessions  bigint      NOT NULL DEFAULT 0,
            payloads  bigint      NOT NULL DEFAULT 0,
            watch_ms  bigint      NOT NULL DEFAULT 0
        ) PARTITION BY RANGE (time);
        PERFORM stats_ensure_partitions(ARRAY(
            SELECT DISTINCT (time AT TIME ZONE 'UTC')::date FROM stats_unpartitioned));
        INSERT INTO stats (time, customer, content, cdn, p2p, sessions, payloads, watch_ms)
        SELECT time, customer, content, cdn, p2p, sessions, payloads, watch_ms
        FROM stats_unpartitioned;
        DROP TABLE stats_unpartitioned;
        ALTER TABLE stats ADD PRIMARY KEY (time, customer, content);
        CREATE INDEX stats_customer_time ON stats (customer, time);
        CREATE INDEX stats_content_time ON stats (content, time);
    END IF;
END
$$;

-- Rollups: the sums of the stats rows per UTC hour and per UTC day of their
-- window end (`bucket` is the hour's or day's start), per customer and content
-- and per customer. Written in the flush's transaction, from the same staged
-- sums as the stats rows, so they are exactly the sums of the rows. numeric:
-- sums over many rows may pass bigint (docs/stats-table.md, "Counter bounds").
-- fillfactor leaves room in each page for the updates of the open hour and day
-- to be HOT (no index entry written).
CREATE TABLE IF NOT EXISTS stats_hourly (
    bucket    timestamptz NOT NULL,
    customer  text        NOT NULL,
    content   text        NOT NULL,
    cdn       numeric     NOT NULL,
    p2p       numeric     NOT NULL,
    sessions  numeric     NOT NULL,
    payloads  numeric     NOT NULL,
    watch_ms  numeric     NOT NULL,
    PRIMARY KEY (bucket, customer, content)
) WITH (fillfactor = 80);
CREATE INDEX IF NOT EXISTS stats_hourly_customer ON stats_hourly (customer, bucket);

CREATE TABLE IF NOT EXISTS stats_daily (
    bucket    timestamptz NOT NULL,
    customer  text        NOT NULL,
    content   text        NOT NULL,
    cdn       numeric     NOT NULL,
    p2p       numeric     NOT NULL,
    sessions  numeric     NOT NULL,
    payloads  numeric     NOT NULL,
    watch_ms  numeric     NOT NULL,
    PRIMARY KEY (bucket, customer, content)
) WITH (fillfactor = 80);
CREATE INDEX IF NOT EXISTS stats_daily_customer ON stats_daily (customer, bucket);

CREATE TABLE IF NOT EXISTS stats_customer_hourly (
    bucket    timestamptz NOT NULL,
    customer  text        NOT NULL,
    cdn       numeric     NOT NULL,
    p2p       numeric     NOT NULL,
    sessions  numeric     NOT NULL,
    payloads  numeric     NOT NULL,
    watch_ms  numeric     NOT NULL,
    PRIMARY KEY (bucket, customer)
) WITH (fillfactor = 80);

CREATE TABLE IF NOT EXISTS stats_customer_daily (
    bucket    timestamptz NOT NULL,
    customer  text        NOT NULL,
    cdn       numeric     NOT NULL,
    p2p       numeric     NOT NULL,
    sessions  numeric     NOT NULL,
    payloads  numeric     NOT NULL,
    watch_ms  numeric     NOT NULL,
    PRIMARY KEY (bucket, customer)
) WITH (fillfactor = 80);

-- Rows present before the rollups existed (an upgraded deployment) are
-- rolled up once, here; afterwards every write keeps the rollups.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM stats_hourly) THEN
        INSERT INTO stats_hourly
        SELECT date_trunc('hour', time, 'UTC'), customer, content, sum(cdn), sum(p2p),
               sum(sessions), sum(payloads), sum(watch_ms)
        FROM stats GROUP BY 1, 2, 3;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM stats_daily) THEN
        INSERT INTO stats_daily
        SELECT date_trunc('day', bucket, 'UTC'), customer, content, sum(cdn), sum(p2p),
               sum(sessions), sum(payloads), sum(watch_ms)
        FROM stats_hourly GROUP BY 1, 2, 3;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM stats_customer_hourly) THEN
        INSERT INTO stats_customer_hourly
        SELECT bucket, customer, sum(cdn), sum(p2p), sum(sessions), sum(payloads), sum(watch_ms)
        FROM stats_hourly GROUP BY 1, 2;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM stats_customer_daily) THEN
        INSERT INTO stats_customer_daily
        SELECT bucket, customer, sum(cdn), sum(p2p), sum(sessions), sum(payloads), sum(watch_ms)
        FROM stats_daily GROUP BY 1, 2;
    END IF;
END
$$;

-- Retention deletes ledger rows with the partitions of their windows.
CREATE INDEX IF NOT EXISTS flush_ledger_window_end ON flush_ledger (window_end);
