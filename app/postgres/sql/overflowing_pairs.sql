-- The staged pairs whose row in `stats` would pass bigint in some column once
-- the staged sums are added (computed in numeric, which cannot overflow).
SELECT g.customer, g.content
FROM (
    SELECT customer, content, sum(cdn) AS cdn, sum(p2p) AS p2p, sum(sessions) AS sessions,
           sum(payloads) AS payloads, sum(watch_ms) AS watch_ms
    FROM flush_staging
    GROUP BY customer, content
) AS g
LEFT JOIN stats AS s ON s.time = %(time)s AND s.customer = g.customer AND s.content = g.content
WHERE greatest(coalesce(s.cdn, 0) + g.cdn, coalesce(s.p2p, 0) + g.p2p,
               coalesce(s.sessions, 0) + g.sessions, coalesce(s.payloads, 0) + g.payloads,
               coalesce(s.watch_ms, 0) + g.watch_ms) > 9223372036854775807
