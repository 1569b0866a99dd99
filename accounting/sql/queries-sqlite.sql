-- Example queries on media_sessions (SQLite 3.38+ JSON functions). The info column holds the
-- statistics the relay reported (see README), plus dialog_id and timed_out.

-- Calls of one user in a date range (start_time is a Unix timestamp).
SELECT call_id,
       json_extract(CAST(info AS TEXT), '$.from_uri') AS from_uri,
       json_extract(CAST(info AS TEXT), '$.to_uri') AS to_uri,
       datetime(json_extract(CAST(info AS TEXT), '$.start_time'), 'unixepoch') AS started,
       json_extract(CAST(info AS TEXT), '$.duration') AS seconds
FROM media_sessions
WHERE json_extract(CAST(info AS TEXT), '$.from_uri') = 'alice@example.com'
  AND json_extract(CAST(info AS TEXT), '$.start_time') BETWEEN CAST(strftime('%s', '2026-11-01') AS INTEGER) AND CAST(strftime('%s', '2026-12-01') AS INTEGER)
ORDER BY started;

-- Total traffic per relay (the relay's address is the host part of each stream's caller_local).
SELECT substr(json_extract(stream.value, '$.caller_local'), 1, instr(json_extract(stream.value, '$.caller_local'), ':') - 1) AS relay,
       sum(json_extract(stream.value, '$.caller_bytes') + json_extract(stream.value, '$.callee_bytes')) AS bytes
FROM media_sessions, json_each(CAST(info AS TEXT), '$.streams') AS stream
GROUP BY relay
ORDER BY bytes DESC;

-- Calls that ended because their media stopped.
SELECT call_id, json_extract(CAST(info AS TEXT), '$.dialog_id') AS dialog_id
FROM media_sessions
WHERE json_extract(CAST(info AS TEXT), '$.timed_out') = 1;

-- Codec usage (the caller's codec of every stream).
SELECT json_extract(stream.value, '$.caller_codec') AS codec, count(*) AS streams
FROM media_sessions, json_each(CAST(info AS TEXT), '$.streams') AS stream
GROUP BY codec
ORDER BY streams DESC;
