-- GET /stats filters by customer or content over a time range; the primary
-- key (time, customer, content) serves time ranges alone.
CREATE INDEX IF NOT EXISTS stats_customer_time ON stats (customer, time);
CREATE INDEX IF NOT EXISTS stats_content_time ON stats (content, time);
CREATE INDEX IF NOT EXISTS flush_ledger_flushed_at ON flush_ledger (flushed_at);
