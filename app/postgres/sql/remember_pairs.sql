-- The pairs of this chunk of a window, as 64-bit hashes: a window added in
-- several chunks counts its rows once each at the end (count_pairs.sql), even
-- when a pair's partial sums fell in two chunks. A newline cannot occur in a
-- customer name (docs/payload.md), so the hashed text names one pair.
CREATE TEMPORARY TABLE IF NOT EXISTS flush_pairs (pair bigint NOT NULL) ON COMMIT DROP;
INSERT INTO flush_pairs
SELECT hashtextextended(time::text || ' ' || customer || E'\n' || content, 0) FROM flush_sums
