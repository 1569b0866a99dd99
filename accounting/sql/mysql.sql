-- MediaProxy database accounting for MySQL / MariaDB: one row per call, statistics as JSON in info,
-- and search columns filled from it (start_time in Unix seconds, duration in seconds, the user,
-- the relay, why the call ended, and what each side sent over all streams). The dispatcher creates
-- this table itself when its user may (CREATE and ALTER rights), and adds the search columns and
-- indexes to a table of an earlier version. These are the same statements, for operators who
-- create it by hand. Table and the first four column names are configurable in [Database], the
-- search columns' names are fixed.
CREATE TABLE IF NOT EXISTS media_sessions (
    id INT PRIMARY KEY AUTO_INCREMENT,
    call_id VARCHAR(255) NOT NULL,
    from_tag VARCHAR(64) NOT NULL,
    to_tag VARCHAR(64),
    info MEDIUMBLOB,
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
ALTER TABLE media_sessions ADD UNIQUE callid_idx (call_id, from_tag, to_tag);
ALTER TABLE media_sessions ADD INDEX started_idx (start_time, relay, caller_packets, callee_packets, caller_bytes, callee_bytes);
ALTER TABLE media_sessions ADD INDEX user_idx (username, start_time);
ALTER TABLE media_sessions ADD INDEX reason_idx (end_reason, start_time);
