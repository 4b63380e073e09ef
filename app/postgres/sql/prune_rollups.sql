-- The rollup rows of buckets before %(before)s (a UTC midnight): their stats
-- rows are in the partitions retention drops.
DELETE FROM stats_hourly WHERE bucket < %(before)s;
DELETE FROM stats_daily WHERE bucket < %(before)s;
DELETE FROM stats_customer_hourly WHERE bucket < %(before)s;
DELETE FROM stats_customer_daily WHERE bucket < %(before)s
