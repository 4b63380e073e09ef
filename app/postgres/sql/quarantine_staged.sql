-- Move the staged sums of the given pairs into the quarantine, exactly.
WITH moved AS (
    DELETE FROM flush_staging
    WHERE (customer, content) IN (SELECT * FROM unnest(%(customers)s::text[], %(contents)s::text[]))
    RETURNING customer, content, cdn, p2p, sessions, payloads, watch_ms
)
INSERT INTO stats_quarantine
    (time, customer, content, cdn, p2p, sessions, payloads, watch_ms, reason, snapshot_ids)
SELECT %(time)s, customer, content, sum(cdn), sum(p2p), sum(sessions), sum(payloads),
       sum(watch_ms), %(reason)s, %(snapshot_ids)s
FROM moved
GROUP BY customer, content
