-- Add the staged partial sums (one per shard snapshot) into stats and
-- report what was added: rows, cdn, p2p, sessions, payloads.
WITH added AS (
    SELECT customer, content,
           sum(cdn)::bigint AS cdn, sum(p2p)::bigint AS p2p,
           sum(sessions)::bigint AS sessions, sum(payloads)::bigint AS payloads
    FROM flush_staging
    GROUP BY customer, content
), upserted AS (
    INSERT INTO stats AS s (time, customer, content, cdn, p2p, sessions, payloads)
    SELECT %(time)s, customer, content, cdn, p2p, sessions, payloads FROM added
    ON CONFLICT (time, customer, content) DO UPDATE SET
        cdn = s.cdn + EXCLUDED.cdn,
        p2p = s.p2p + EXCLUDED.p2p,
        sessions = s.sessions + EXCLUDED.sessions,
        payloads = s.payloads + EXCLUDED.payloads
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted),
       coalesce(sum(cdn), 0)::bigint, coalesce(sum(p2p), 0)::bigint,
       coalesce(sum(sessions), 0)::bigint, coalesce(sum(payloads), 0)::bigint
FROM added
