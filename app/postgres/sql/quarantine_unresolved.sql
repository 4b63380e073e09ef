SELECT id, time, customer, content, cdn, p2p, sessions, payloads, watch_ms, reason,
       quarantined_at
FROM stats_quarantine
WHERE resolved_at IS NULL
ORDER BY id
