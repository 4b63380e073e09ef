COPY flush_staging (time, customer, content, cdn, p2p, sessions, payloads, watch_ms) FROM STDIN WITH (FORMAT csv)
