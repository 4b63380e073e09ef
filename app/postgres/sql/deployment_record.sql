-- The first process records its settings; later ones find them recorded.
INSERT INTO deployment (id, window_seconds, shards, key_prefix)
VALUES (1, %(window_seconds)s, %(shards)s, %(key_prefix)s)
ON CONFLICT (id) DO NOTHING
