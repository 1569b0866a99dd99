-- MediaProxy database accounting for MySQL / MariaDB: one row per call, statistics as JSON in info.
CREATE TABLE IF NOT EXISTS media_sessions (
    id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    call_id VARCHAR(255) NOT NULL,
    from_tag VARCHAR(64) NOT NULL,
    to_tag VARCHAR(64),
    info MEDIUMBLOB,
    UNIQUE KEY callid_idx (call_id, from_tag, to_tag)
);
