CREATE TEMPORARY TABLE flush_staging (
    customer  text   NOT NULL,
    content   text   NOT NULL,
    cdn       bigint NOT NULL,
    p2p       bigint NOT NULL,
    sessions  bigint NOT NULL,
    payloads  bigint NOT NULL,
    watch_ms  bigint NOT NULL
) ON COMMIT DROP
