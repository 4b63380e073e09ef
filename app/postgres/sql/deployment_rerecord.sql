-- A deliberate change of settings, after a drain (payload-stats settings --rerecord).
INSERT INTO deployment (id, window_seconds, shards, key_prefix)
VALUES (1, %(window_seconds)s, %(shards)s, %(key_prefix)s)
ON CONFLICT (id) DO UPDATE SET
    window_seconds = EXCLUDED.window_seconds,
    shards = EXCLUDED.shards,
    key_prefix = EXCLUDED.key_prefix,
    recorded_at = now()
