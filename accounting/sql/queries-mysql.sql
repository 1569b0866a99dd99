-- Example queries on media_sessions for MariaDB 10.6+ / MySQL 8.0.21+. The info column holds the
-- statistics the relay reported as JSON (see README), plus dialog_id and timed_out.

-- Calls of one user in a date range (start_time is a Unix timestamp).
SELECT call_id,
       JSON_VALUE(CONVERT(info USING utf8mb4), '$.from_uri') AS from_uri,
       JSON_VALUE(CONVERT(info USING utf8mb4), '$.to_uri') AS to_uri,
       FROM_UNIXTIME(JSON_VALUE(CONVERT(info USING utf8mb4), '$.start_time')) AS started,
       JSON_VALUE(CONVERT(info USING utf8mb4), '$.duration') AS seconds
FROM media_sessions
WHERE JSON_VALUE(CONVERT(info USING utf8mb4), '$.from_uri') = 'alice@example.com'
  AND JSON_VALUE(CONVERT(info USING utf8mb4), '$.start_time') BETWEEN UNIX_TIMESTAMP('2026-11-01') AND UNIX_TIMESTAMP('2026-12-01')
ORDER BY started;

-- Total traffic per relay (the relay's address is the host part of each stream's caller_local).
SELECT SUBSTRING_INDEX(stream.caller_local, ':', 1) AS relay,
       SUM(stream.caller_bytes + stream.callee_bytes) AS bytes
FROM media_sessions,
     JSON_TABLE(CONVERT(info USING utf8mb4), '$.streams[*]' COLUMNS (
         caller_local VARCHAR(64) PATH '$.caller_local',
         caller_bytes BIGINT PATH '$.caller_bytes',
         callee_bytes BIGINT PATH '$.callee_bytes')) AS stream
GROUP BY relay
ORDER BY bytes DESC;

-- Calls that ended because their media stopped.
SELECT call_id, JSON_VALUE(CONVERT(info USING utf8mb4), '$.dialog_id') AS dialog_id
FROM media_sessions
WHERE JSON_CONTAINS(CONVERT(info USING utf8mb4), 'true', '$.timed_out');

-- Codec usage (the caller's codec of every stream).
SELECT stream.codec AS codec, COUNT(*) AS streams
FROM media_sessions,
     JSON_TABLE(CONVERT(info USING utf8mb4), '$.streams[*]' COLUMNS (codec VARCHAR(32) PATH '$.caller_codec')) AS stream
GROUP BY codec
ORDER BY streams DESC;
