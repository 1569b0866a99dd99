-- MediaProxy database accounting for PostgreSQL: one row per call, statistics as JSON in info.
-- The dispatcher creates this table itself when its user may. These are the same statements, for
-- operators who create it by hand. Names are configurable in [Database].
CREATE TABLE IF NOT EXISTS media_sessions (
    id SERIAL PRIMARY KEY,
    call_id VARCHAR(255) NOT NULL,
    from_tag VARCHAR(64) NOT NULL,
    to_tag VARCHAR(64),
    info BYTEA
);
CREATE UNIQUE INDEX IF NOT EXISTS media_sessions_callid_idx ON media_sessions (call_id, from_tag, to_tag);
