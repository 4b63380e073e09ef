-- An unresolved isolated row, locked until this transaction resolves it.
SELECT time, customer, content, cdn, p2p, sessions, payloads, watch_ms
FROM stats_quarantine
WHERE id = %(id)s AND resolved_at IS NULL
FOR UPDATE
