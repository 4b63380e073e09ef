-- Add the summed staged rows into their stats rows. No RETURNING or CTE: on
-- 100k rows they cost a quarter more. A sum past bigint fails the statement;
-- the flusher then isolates the rows concerned (overflowing_pairs.sql) and
-- runs it again.
INSERT INTO stats AS s (time, customer, content, cdn, p2p, sessions, payloads, watch_ms)
SELECT time, customer, content, cdn, p2p, sessions, payloads, watch_ms
FROM flush_sums
ON CONFLICT (time, customer, content) DO UPDATE SET
    cdn = s.cdn + EXCLUDED.cdn,
    p2p = s.p2p + EXCLUDED.p2p,
    sessions = s.sessions + EXCLUDED.sessions,
    payloads = s.payloads + EXCLUDED.payloads,
    watch_ms = s.watch_ms + EXCLUDED.watch_ms
