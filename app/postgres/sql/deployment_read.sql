SELECT window_seconds, shards, key_prefix FROM deployment WHERE id = 1
