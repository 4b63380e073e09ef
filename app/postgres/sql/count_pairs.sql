-- The distinct pairs remembered by remember_pairs.sql.
SELECT count(DISTINCT pair) FROM flush_pairs
