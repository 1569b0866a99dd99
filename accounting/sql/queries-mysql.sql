-- Example queries on media_sessions for MariaDB 10.6+ / MySQL 8. Each one reads a time range
-- through the search columns' indexes (start_time is in Unix seconds), and the info column holds the
-- whole record as JSON (see README) for what the columns do not have. Times are read in UTC.
-- bench/accounting_queries.py times them at 200,000 calls.
SET time_zone = '+00:00';

-- A user's calls in a month (username: the From URI's user part, or what the proxy signalled).
SELECT call_id,
       JSON_UNQUOTE(JSON_EXTRACT(CONVERT(info USING utf8mb4), '$.to_uri')) AS to_uri,
       FROM_UNIXTIME(start_time) AS started,
       duration
FROM media_sessions
WHERE username = 'alice'
  AND start_time >= UNIX_TIMESTAMP('2026-11-01') AND start_time < UNIX_TIMESTAMP('2026-12-01')
ORDER BY start_time;

-- Traffic per day and per relay in a month, each way.
-- (days are counted as whole multiples of 86,400 s: cheaper per row than a date per row)
SELECT DATE(FROM_UNIXTIME(day * 86400)) AS day, relay, calls, caller_bytes, callee_bytes
FROM (SELECT FLOOR(start_time / 86400) AS day, relay, count(*) AS calls,
             sum(caller_bytes) AS caller_bytes, sum(callee_bytes) AS callee_bytes
      FROM media_sessions
      WHERE start_time >= UNIX_TIMESTAMP('2026-11-01') AND start_time < UNIX_TIMESTAMP('2026-12-01')
      GROUP BY 1, 2) AS daily
ORDER BY day, relay;

-- Peak concurrent calls on a day, and when (calls longer than a day before it are not counted).
WITH calls AS (
    SELECT start_time AS started, start_time + duration AS ended
    FROM media_sessions
    WHERE start_time >= UNIX_TIMESTAMP('2026-11-24') - 86400 AND start_time < UNIX_TIMESTAMP('2026-11-25')
),
events AS (SELECT started AS at, 1 AS delta FROM calls UNION ALL SELECT ended, -1 FROM calls),
running AS (SELECT at, sum(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS concurrent FROM events)
SELECT FROM_UNIXTIME(at) AS at, concurrent
FROM running
WHERE at >= UNIX_TIMESTAMP('2026-11-24') AND at < UNIX_TIMESTAMP('2026-11-25')
ORDER BY concurrent DESC, at
LIMIT 1;

-- One-way audio on a day: one side sent media, the other nothing (NAT or firewall trouble).
SELECT call_id, username, relay, FROM_UNIXTIME(start_time) AS started, duration,
       CASE WHEN caller_packets = 0 THEN 'caller' ELSE 'callee' END AS silent_side,
       JSON_UNQUOTE(JSON_EXTRACT(CONVERT(info USING utf8mb4), '$.caller_ua')) AS caller_ua,
       JSON_UNQUOTE(JSON_EXTRACT(CONVERT(info USING utf8mb4), '$.callee_ua')) AS callee_ua
FROM media_sessions
WHERE start_time >= UNIX_TIMESTAMP('2026-11-24') AND start_time < UNIX_TIMESTAMP('2026-11-25')
  AND ((caller_packets > 0 AND callee_packets = 0) OR (callee_packets > 0 AND caller_packets = 0))
ORDER BY start_time;

-- Calls on a day that ended because their media stopped.
SELECT call_id, end_reason, JSON_UNQUOTE(JSON_EXTRACT(CONVERT(info USING utf8mb4), '$.dialog_id')) AS dialog_id
FROM media_sessions
WHERE end_reason IN ('no-traffic timeout', 'on-hold timeout', 'conntrack timeout')
  AND start_time >= UNIX_TIMESTAMP('2026-11-24') AND start_time < UNIX_TIMESTAMP('2026-11-25')
ORDER BY start_time;

-- Codec usage on a day (the caller's codec of every stream).
SELECT stream.codec, count(*) AS streams
FROM media_sessions,
     JSON_TABLE(CONVERT(info USING utf8mb4), '$.streams[*]' COLUMNS (codec VARCHAR(64) PATH '$.caller_codec')) AS stream
WHERE start_time >= UNIX_TIMESTAMP('2026-11-24') AND start_time < UNIX_TIMESTAMP('2026-11-25')
GROUP BY stream.codec
ORDER BY streams DESC, stream.codec;
