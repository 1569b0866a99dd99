-- Example queries on media_sessions for PostgreSQL 12+. Each one reads a time range through the
-- search columns' indexes (start_time is in Unix seconds, UTC), and the info column holds the whole
-- record as UTF-8 JSON in a BYTEA (see README) for what the columns do not have.
-- bench/accounting_queries.py times them at 200,000 calls.

-- A user's calls in a month (username: the From URI's user part, or what the proxy signalled).
SELECT call_id,
       convert_from(info, 'UTF8')::jsonb ->> 'to_uri' AS to_uri,
       to_timestamp(start_time) AS started,
       duration
FROM media_sessions
WHERE username = 'alice'
  AND start_time >= extract(epoch FROM timestamptz '2026-11-01 00:00Z')
  AND start_time < extract(epoch FROM timestamptz '2026-12-01 00:00Z')
ORDER BY start_time;

-- Traffic per day and per relay in a month, each way.
-- (days are counted as whole multiples of 86,400 s: cheaper per row than a date per row)
SELECT (to_timestamp(day * 86400) AT TIME ZONE 'UTC')::date AS day, relay, calls, caller_bytes, callee_bytes
FROM (SELECT floor(start_time / 86400) AS day, relay, count(*) AS calls,
             sum(caller_bytes) AS caller_bytes, sum(callee_bytes) AS callee_bytes
      FROM media_sessions
      WHERE start_time >= extract(epoch FROM timestamptz '2026-11-01 00:00Z')
        AND start_time < extract(epoch FROM timestamptz '2026-12-01 00:00Z')
      GROUP BY 1, 2) AS daily
ORDER BY day, relay;

-- Peak concurrent calls on a day, and when (calls longer than a day before it are not counted).
WITH calls AS (
    SELECT start_time AS started, start_time + duration AS ended
    FROM media_sessions
    WHERE start_time >= extract(epoch FROM timestamptz '2026-11-24 00:00Z') - 86400
      AND start_time < extract(epoch FROM timestamptz '2026-11-25 00:00Z')
),
events AS (SELECT started AS at, 1 AS delta FROM calls UNION ALL SELECT ended, -1 FROM calls),
running AS (SELECT at, sum(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS concurrent FROM events)
SELECT to_timestamp(at) AS at, concurrent
FROM running
WHERE at >= extract(epoch FROM timestamptz '2026-11-24 00:00Z') AND at < extract(epoch FROM timestamptz '2026-11-25 00:00Z')
ORDER BY concurrent DESC, at
LIMIT 1;

-- One-way audio on a day: one side sent media, the other nothing (NAT or firewall trouble).
SELECT call_id, username, relay, to_timestamp(start_time) AS started, duration,
       CASE WHEN caller_packets = 0 THEN 'caller' ELSE 'callee' END AS silent_side,
       convert_from(info, 'UTF8')::jsonb ->> 'caller_ua' AS caller_ua,
       convert_from(info, 'UTF8')::jsonb ->> 'callee_ua' AS callee_ua
FROM media_sessions
WHERE start_time >= extract(epoch FROM timestamptz '2026-11-24 00:00Z')
  AND start_time < extract(epoch FROM timestamptz '2026-11-25 00:00Z')
  AND ((caller_packets > 0 AND callee_packets = 0) OR (callee_packets > 0 AND caller_packets = 0))
ORDER BY start_time;

-- Calls on a day that ended because their media stopped.
SELECT call_id, end_reason, convert_from(info, 'UTF8')::jsonb ->> 'dialog_id' AS dialog_id
FROM media_sessions
WHERE end_reason IN ('no-traffic timeout', 'on-hold timeout', 'conntrack timeout')
  AND start_time >= extract(epoch FROM timestamptz '2026-11-24 00:00Z')
  AND start_time < extract(epoch FROM timestamptz '2026-11-25 00:00Z')
ORDER BY start_time;

-- Codec usage on a day (the caller's codec of every stream).
SELECT stream ->> 'caller_codec' AS codec, count(*) AS streams
FROM media_sessions, jsonb_array_elements(convert_from(info, 'UTF8')::jsonb -> 'streams') AS stream
WHERE start_time >= extract(epoch FROM timestamptz '2026-11-24 00:00Z')
  AND start_time < extract(epoch FROM timestamptz '2026-11-25 00:00Z')
GROUP BY codec
ORDER BY streams DESC, codec;
