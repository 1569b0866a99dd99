-- MediaProxy database accounting for PostgreSQL: one row per call, statistics as JSON in info.
CREATE TABLE IF NOT EXISTS media_sessions (
    id SERIAL PRIMARY KEY,
    call_id VARCHAR(255) NOT NULL,
    from_tag VARCHAR(64) NOT NULL,
    to_tag VARCHAR(64),
    info BYTEA
);
CREATE UNIQUE INDEX IF NOT EXISTS callid_idx ON media_sessions (call_id, from_tag, to_tag);
