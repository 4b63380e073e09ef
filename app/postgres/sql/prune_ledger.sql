-- Ledger rows of windows (and import chunks) whose rows are all before
-- %(before)s: dropped with their partitions.
DELETE FROM flush_ledger WHERE window_end < %(before)s
