INSERT INTO stats_quarantine
    (time, customer, content, cdn, p2p, sessions, payloads, watch_ms, raw_key, reason,
     snapshot_ids)
VALUES %s
