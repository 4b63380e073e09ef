-- Move the summed staged rows of the given keys into the quarantine, exactly;
-- neither stats nor the rollups get them.
WITH moved AS (
    DELETE FROM flush_sums
    WHERE (time, customer, content) IN (
        SELECT * FROM unnest(%(times)s::timestamptz[], %(customers)s::text[], %(contents)s::text[]))
    RETURNING time, customer, content, cdn, p2p, sessions, payloads, watch_ms
)
INSERT INTO stats_quarantine
    (time, customer, content, cdn, p2p, sessions, payloads, watch_ms, reason, snapshot_ids)
SELECT time, customer, content, cdn, p2p, sessions, payloads, watch_ms, %(reason)s,
       %(snapshot_ids)s
FROM moved
