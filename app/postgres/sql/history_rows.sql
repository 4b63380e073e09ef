-- One page of stats rows in keyset order; {cmp} is > or <, {dir} ASC or DESC.
SELECT time, customer, content, cdn, p2p, sessions, payloads
FROM stats
WHERE (%(customer)s::text IS NULL OR customer = %(customer)s)
  AND (%(content)s::text IS NULL OR content = %(content)s)
  AND (%(from)s::timestamptz IS NULL OR time >= %(from)s)
  AND (%(to)s::timestamptz IS NULL OR time < %(to)s)
  AND (%(after_time)s::timestamptz IS NULL
       OR (time, customer, content) {cmp} (%(after_time)s, %(after_customer)s, %(after_content)s))
ORDER BY time {dir}, customer {dir}, content {dir}
LIMIT %(limit)s
