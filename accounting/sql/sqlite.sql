-- MediaProxy database accounting for SQLite: one row per call, the call's statistics as JSON text
-- in info. The dispatcher creates this table itself. These are the same statements, for operators
-- who create it by hand. Table and column names are configurable in [Database].
CREATE TABLE IF NOT EXISTS media_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id VARCHAR(255) NOT NULL,
    from_tag VARCHAR(64) NOT NULL,
    to_tag VARCHAR(64),
    info BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS media_sessions_callid_idx ON media_sessions (call_id, from_tag, to_tag);
