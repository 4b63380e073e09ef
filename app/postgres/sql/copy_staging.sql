COPY flush_staging (customer, content, cdn, p2p, sessions, payloads) FROM STDIN WITH (FORMAT csv)
