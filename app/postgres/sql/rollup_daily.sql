-- Add the summed staged rows into the daily rollup per customer and content
-- (docs/stats-table.md, "Rollups"); bucket: the UTC day of the window end.
-- The rows are flush_sums itself when it holds one window (its rows are then one
-- per bucket, customer and content already), else flush_sums grouped by bucket.
INSERT INTO stats_daily AS r (bucket, customer, content, cdn, p2p, sessions, payloads, watch_ms)
SELECT bucket, customer, content, cdn, p2p, sessions, payloads, watch_ms
FROM {rows} AS g
ON CONFLICT (bucket, customer, content) DO UPDATE SET
    cdn = r.cdn + EXCLUDED.cdn,
    p2p = r.p2p + EXCLUDED.p2p,
    sessions = r.sessions + EXCLUDED.sessions,
    payloads = r.payloads + EXCLUDED.payloads,
    watch_ms = r.watch_ms + EXCLUDED.watch_ms
