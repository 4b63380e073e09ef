-- Add the summed staged rows into the hourly rollup per customer and content
-- (docs/stats-table.md, "Rollups"); bucket: the UTC hour of the window end.
INSERT INTO stats_hourly AS r (bucket, customer, content, cdn, p2p, sessions, payloads, watch_ms)
SELECT date_trunc('hour', time, 'UTC'), customer, content, sum(cdn), sum(p2p), sum(sessions),
       sum(payloads), sum(watch_ms)
FROM flush_sums
GROUP BY 1, 2, 3
ON CONFLICT (bucket, customer, content) DO UPDATE SET
    cdn = r.cdn + EXCLUDED.cdn,
    p2p = r.p2p + EXCLUDED.p2p,
    sessions = r.sessions + EXCLUDED.sessions,
    payloads = r.payloads + EXCLUDED.payloads,
    watch_ms = r.watch_ms + EXCLUDED.watch_ms
