-- The summed staged rows whose row in `stats` would pass bigint in some column
-- once they are added (computed in numeric, which cannot overflow).
SELECT g.time, g.customer, g.content
FROM flush_sums AS g
LEFT JOIN stats AS s ON s.time = g.time AND s.customer = g.customer AND s.content = g.content
WHERE greatest(coalesce(s.cdn, 0) + g.cdn, coalesce(s.p2p, 0) + g.p2p,
               coalesce(s.sessions, 0) + g.sessions, coalesce(s.payloads, 0) + g.payloads,
               coalesce(s.watch_ms, 0) + g.watch_ms) > 9223372036854775807
