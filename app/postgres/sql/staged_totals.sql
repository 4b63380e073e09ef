-- What the upsert added: rows, cdn, p2p, sessions, payloads, watch_ms. Sums
-- stay numeric: a window's total may pass bigint where no row does.
SELECT count(*), coalesce(sum(cdn), 0), coalesce(sum(p2p), 0), coalesce(sum(sessions), 0),
       coalesce(sum(payloads), 0), coalesce(sum(watch_ms), 0)
FROM flush_sums
