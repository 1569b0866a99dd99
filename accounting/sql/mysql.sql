-- MediaProxy database accounting for MySQL / MariaDB: one row per call, statistics as JSON in info.
-- The dispatcher creates this table itself when its user may (CREATE and ALTER rights). These are
-- the same statements, for operators who create it by hand. Names are configurable in [Database].
CREATE TABLE IF NOT EXISTS media_sessions (
    id INT PRIMARY KEY AUTO_INCREMENT,
    call_id VARCHAR(255) NOT NULL,
    from_tag VARCHAR(64) NOT NULL,
    to_tag VARCHAR(64),
    info MEDIUMBLOB
);
ALTER TABLE media_sessions ADD UNIQUE callid_idx (call_id, from_tag, to_tag);
