-- Example queries on media_sessions for PostgreSQL 12+. The info column holds the statistics the
-- relay reported as UTF-8 JSON in a BYTEA (see README), plus dialog_id and timed_out.

-- Calls of one user in a date range (start_time is a Unix timestamp).
SELECT call_id,
       convert_from(info, 'UTF8')::jsonb ->> 'from_uri' AS from_uri,
       convert_from(info, 'UTF8')::jsonb ->> 'to_uri' AS to_uri,
       to_timestamp((convert_from(info, 'UTF8')::jsonb ->> 'start_time')::float8) AS started,
       (convert_from(info, 'UTF8')::jsonb ->> 'duration')::int AS seconds
FROM media_sessions
WHERE convert_from(info, 'UTF8')::jsonb ->> 'from_uri' = 'alice@example.com'
  AND to_timestamp((convert_from(info, 'UTF8')::jsonb ->> 'start_time')::float8) BETWEEN '2026-11-01' AND '2026-12-01'
ORDER BY started;

-- Total traffic per relay (the relay's address is the host part of each stream's caller_local).
SELECT split_part(stream ->> 'caller_local', ':', 1) AS relay,
       sum((stream ->> 'caller_bytes')::bigint + (stream ->> 'callee_bytes')::bigint) AS bytes
FROM media_sessions, jsonb_array_elements(convert_from(info, 'UTF8')::jsonb -> 'streams') AS stream
GROUP BY relay
ORDER BY bytes DESC;

-- Calls that ended because their media stopped.
SELECT call_id, convert_from(info, 'UTF8')::jsonb ->> 'dialog_id' AS dialog_id
FROM media_sessions
WHERE (convert_from(info, 'UTF8')::jsonb ->> 'timed_out')::boolean;

-- Codec usage (the caller's codec of every stream).
SELECT stream ->> 'caller_codec' AS codec, count(*) AS streams
FROM media_sessions, jsonb_array_elements(convert_from(info, 'UTF8')::jsonb -> 'streams') AS stream
GROUP BY codec
ORDER BY streams DESC;
