-- Claim snapshots for this transaction: returns the ids not written before.
-- A concurrent claim of the same id waits for this transaction to end.
INSERT INTO flush_ledger (snapshot_id, window_end)
VALUES %s
ON CONFLICT (snapshot_id) DO NOTHING
RETURNING snapshot_id
