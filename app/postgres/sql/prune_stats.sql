-- Delete at most %(batch)s rows older than %(before)s; called until it deletes none.
DELETE FROM stats
WHERE ctid IN (SELECT ctid FROM stats WHERE time < %(before)s LIMIT %(batch)s)
