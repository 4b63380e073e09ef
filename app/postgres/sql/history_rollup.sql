-- One page of stats rolled up into time buckets and groups, in keyset order.
-- A column not grouped by is '' in every row; a NULL bucket keeps window times.
-- The sums stay numeric (sum of bigint): a rollup may pass 2^63 - 1.
SELECT time, customer, content, cdn, p2p, sessions, payloads
FROM (
    SELECT CASE WHEN %(bucket)s::interval IS NULL THEN time
                ELSE date_bin(%(bucket)s::interval, time, TIMESTAMPTZ '1970-01-01 00:00:00+00')
           END AS time,
           CASE WHEN %(by_customer)s THEN customer ELSE '' END AS customer,
           CASE WHEN %(by_content)s THEN content ELSE '' END AS content,
           sum(cdn) AS cdn, sum(p2p) AS p2p,
           sum(sessions) AS sessions, sum(payloads) AS payloads
    FROM stats
    WHERE (%(customer)s::text IS NULL OR customer = %(customer)s)
      AND (%(content)s::text IS NULL OR content = %(content)s)
      AND (%(from)s::timestamptz IS NULL OR time >= %(from)s)
      AND (%(to)s::timestamptz IS NULL OR time < %(to)s)
    GROUP BY 1, 2, 3
) AS rolled
WHERE %(after_time)s::timestamptz IS NULL
   OR (time, customer, content) {cmp} (%(after_time)s, %(after_customer)s, %(after_content)s)
ORDER BY time {dir}, customer {dir}, content {dir}
LIMIT %(limit)s
