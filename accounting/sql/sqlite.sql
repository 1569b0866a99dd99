-- MediaProxy database accounting for SQLite: one row per call, the call's statistics as JSON text
-- in info, and search columns filled from it (start_time in Unix seconds, duration in seconds, the
-- user, the relay, why the call ended, and what each side sent over all streams). The dispatcher
-- creates this table itself, and adds the search columns and indexes to a table of an earlier
-- version. These are the same statements, for operators who create it by hand. Table and the
-- first four column names are configurable in [Database], the search columns' names are fixed.
CREATE TABLE IF NOT EXISTS media_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id VARCHAR(255) NOT NULL,
    from_tag VARCHAR(64) NOT NULL,
    to_tag VARCHAR(64),
    info BLOB,
    start_time DOUBLE PRECISION,
    duration INT,
    username VARCHAR(64),
    relay VARCHAR(64),
    end_reason VARCHAR(32),
    caller_packets BIGINT,
    callee_packets BIGINT,
    caller_bytes BIGINT,
    callee_bytes BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS media_sessions_callid_idx ON media_sessions (call_id, from_tag, to_tag);
CREATE INDEX IF NOT EXISTS media_sessions_started_idx ON media_sessions (start_time, relay, caller_packets, callee_packets, caller_bytes, callee_bytes);
CREATE INDEX IF NOT EXISTS media_sessions_user_idx ON media_sessions (username, start_time);
CREATE INDEX IF NOT EXISTS media_sessions_reason_idx ON media_sessions (end_reason, start_time);
