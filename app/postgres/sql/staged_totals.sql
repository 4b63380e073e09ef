-- What the upsert added: rows (distinct pairs), cdn, p2p, sessions, payloads.
SELECT (SELECT count(*) FROM (SELECT DISTINCT customer, content FROM flush_staging) AS pairs),
       coalesce(sum(cdn), 0)::bigint, coalesce(sum(p2p), 0)::bigint,
       coalesce(sum(sessions), 0)::bigint, coalesce(sum(payloads), 0)::bigint
FROM flush_staging
