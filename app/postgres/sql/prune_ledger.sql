DELETE FROM flush_ledger
WHERE ctid IN (SELECT ctid FROM flush_ledger WHERE flushed_at < %(before)s LIMIT %(batch)s)
