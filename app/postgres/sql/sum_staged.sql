-- The staged partial sums added up once per (time, customer, content): stats
-- and every rollup are written from this table. numeric: a sum of partials
-- may pass bigint (docs/stats-table.md, "Counter bounds").
CREATE TEMPORARY TABLE flush_sums ON COMMIT DROP AS
SELECT time, customer, content, sum(cdn) AS cdn, sum(p2p) AS p2p, sum(sessions) AS sessions,
       sum(payloads) AS payloads, sum(watch_ms) AS watch_ms
FROM flush_staging
GROUP BY time, customer, content
