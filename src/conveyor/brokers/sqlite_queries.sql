-- Named queries of the SQLite broker. Each block starts with "-- name: <name>"; the schema is in
-- sqlite_schema.sql. Every job lives in conveyor_jobs; "seq" (the rowid) orders the queue, "id"
-- (UUIDv7) names the job.

-- name: insert
INSERT INTO conveyor_jobs (id, task, queue, state, priority, payload, key, max_attempts, timeout,
                           created_at, run_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING

-- name: id_by_key
SELECT id FROM conveyor_jobs WHERE key = ? AND state IN ('queued', 'scheduled', 'running')

-- name: promote
UPDATE conveyor_jobs SET state = 'queued', updated_at = :now WHERE state = 'scheduled' AND run_at <= :now

-- name: next_due
SELECT min(run_at) FROM conveyor_jobs WHERE state = 'scheduled'

-- name: paused
SELECT name FROM conveyor_queues WHERE paused = 1

-- name: claim
UPDATE conveyor_jobs
SET state = 'running', attempts = attempts + 1, token = token + 1, lease_until = :deadline,
    consumer = :consumer, started_at = NULL, updated_at = :now, cancel_requested = 0
WHERE seq IN (SELECT seq FROM conveyor_jobs WHERE state = 'queued' AND queue = :queue
              ORDER BY priority DESC, seq LIMIT :limit)
RETURNING seq, id, token, task, queue, payload, attempts, max_attempts, timeout, lease_until, priority

-- name: succeed
UPDATE conveyor_jobs
SET state = 'succeeded', result = ?, started_at = coalesce(?, started_at), finished_at = ?, updated_at = ?,
    lease_until = NULL, consumer = NULL
WHERE id = ? AND token = ? AND state = 'running'

-- name: settle
-- A job whose cancellation was requested is never queued again: its retry cancels it instead.
-- A job whose success its transaction committed (current_job().transaction()) has succeeded.
UPDATE conveyor_jobs
SET state = CASE WHEN committed_at IS NOT NULL THEN 'succeeded'
                 WHEN cancel_requested AND :state = 'scheduled' THEN 'cancelled' ELSE :state END,
    result = coalesce(:result, result), error = coalesce(:error, error),
    started_at = coalesce(:started_at, started_at),
    finished_at = CASE WHEN :state IN ('failed', 'cancelled') OR cancel_requested THEN :finished_at
                       ELSE finished_at END,
    run_at = CASE WHEN :state = 'scheduled' AND NOT cancel_requested THEN coalesce(:run_at, :now)
                  ELSE run_at END,
    history = json_insert(coalesce(history, '[]'), '$[#]', json_set(json(:entry), '$.attempt', attempts)),
    updated_at = :now, lease_until = NULL, consumer = NULL
WHERE id = :id AND token = :token AND state = 'running'

-- name: hand_back
-- Not an attempt. Scheduled when it names a later run_at (a back-off); its error, when given, is kept.
UPDATE conveyor_jobs
SET state = CASE WHEN committed_at IS NOT NULL THEN 'succeeded' WHEN cancel_requested THEN 'cancelled'
                 WHEN :run_at > :now THEN 'scheduled' ELSE 'queued' END,
    attempts = attempts - 1, error = coalesce(:error, error),
    finished_at = CASE WHEN committed_at IS NOT NULL THEN committed_at WHEN cancel_requested THEN :now
                       ELSE finished_at END,
    run_at = CASE WHEN cancel_requested THEN run_at WHEN :run_at > :now THEN :run_at ELSE :now END,
    updated_at = :now, lease_until = NULL, consumer = NULL
WHERE id = :id AND token = :token AND state = 'running'

-- name: mark_started
UPDATE conveyor_jobs SET started_at = :at, updated_at = :now WHERE id = :id AND token = :token AND state = 'running'

-- name: reserved
SELECT queue, count(*) FROM conveyor_jobs WHERE state = 'running' AND started_at IS NULL GROUP BY queue

-- name: current_tokens
SELECT id, token, cancel_requested FROM conveyor_jobs WHERE state = 'running' AND id IN ({ids})

-- name: extend
UPDATE conveyor_jobs SET lease_until = :deadline WHERE id = :id AND token = :token AND state = 'running'

-- name: progress
UPDATE conveyor_jobs SET progress = :fraction, progress_message = :message, updated_at = :now
WHERE id = :id AND token = :token AND state = 'running'

-- name: lose
-- Back to the queue; failed when out of attempts; cancelled when its cancellation was requested.
UPDATE conveyor_jobs
SET state = CASE WHEN committed_at IS NOT NULL THEN 'succeeded' WHEN cancel_requested THEN 'cancelled'
                 WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
    error = CASE WHEN committed_at IS NULL AND NOT cancel_requested AND attempts >= max_attempts THEN :error
                 ELSE error END,
    finished_at = CASE WHEN committed_at IS NOT NULL THEN committed_at
                       WHEN cancel_requested OR attempts >= max_attempts THEN :now ELSE NULL END,
    history = json_insert(coalesce(history, '[]'), '$[#]',
                          json_object('attempt', attempts, 'at', :now, 'state', 'lost', 'error', json(:error))),
    run_at = CASE WHEN committed_at IS NOT NULL OR cancel_requested OR attempts >= max_attempts THEN run_at
                  ELSE :now END, updated_at = :now, lease_until = NULL, consumer = NULL
WHERE state = 'running' AND {where}

-- name: commit_success
-- In the task's own transaction (current_job().transaction()): its success commits with its effect.
UPDATE conveyor_jobs SET committed_at = :now, updated_at = :now
WHERE id = :id AND token = :token AND state = 'running' AND committed_at IS NULL

-- name: has_committed_at
SELECT 1 FROM pragma_table_info('conveyor_jobs') WHERE name = 'committed_at'

-- name: add_committed_at
-- Came with current_job().transaction(): a database of an earlier Conveyor gains it when opened.
ALTER TABLE conveyor_jobs ADD COLUMN committed_at REAL

-- name: cancel_waiting
UPDATE conveyor_jobs SET state = 'cancelled', finished_at = :now, updated_at = :now
WHERE id = :id AND state IN ('queued', 'scheduled')

-- name: cancel_running
UPDATE conveyor_jobs SET cancel_requested = 1, updated_at = :now WHERE id = :id AND state = 'running'

-- name: retry_by_hand
UPDATE conveyor_jobs
SET state = 'queued', attempts = 0, error = NULL, finished_at = NULL, cancel_requested = 0, committed_at = NULL,
    run_at = :now, updated_at = :now
WHERE id = :id AND state IN ('failed', 'cancelled')

-- name: state_of
SELECT state FROM conveyor_jobs WHERE id = ?

-- name: delete
DELETE FROM conveyor_jobs WHERE id = ? AND state != 'running'

-- name: pause
INSERT INTO conveyor_queues (name, paused) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET paused = excluded.paused

-- name: prune
DELETE FROM conveyor_jobs WHERE state IN ('succeeded', 'cancelled') AND finished_at < ?

-- name: get
SELECT * FROM conveyor_jobs WHERE id = ?

-- name: counts
SELECT queue, state, count(*) FROM conveyor_jobs GROUP BY queue, state

-- name: heartbeat
INSERT INTO conveyor_workers (id, last_seen, info) VALUES (?, ?, ?)
ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, info = excluded.info

-- name: unregister
DELETE FROM conveyor_workers WHERE id = ?

-- name: workers
SELECT info, last_seen FROM conveyor_workers WHERE last_seen >= ?

-- name: forget_workers
DELETE FROM conveyor_workers WHERE last_seen < ?

-- name: find_by_key
SELECT * FROM conveyor_jobs WHERE key = ? ORDER BY seq DESC LIMIT 1

-- name: stats
-- Finished jobs since :since, one row per queue, bucket and state, with the nearest-rank p95 run time.
WITH done AS (
    SELECT queue, state, CAST((finished_at - :since) / :bucket AS INTEGER) AS b,
           finished_at - started_at AS run, started_at - created_at AS wait
    FROM conveyor_jobs WHERE state = 'succeeded' AND finished_at >= :since
    UNION ALL
    SELECT queue, state, CAST((finished_at - :since) / :bucket AS INTEGER),
           finished_at - started_at, started_at - created_at
    FROM conveyor_jobs WHERE state = 'failed' AND finished_at >= :since
),
ranked AS (
    SELECT queue, b, state, run, wait,
           row_number() OVER (PARTITION BY queue, b ORDER BY run IS NULL, run) AS n,
           count(run) OVER (PARTITION BY queue, b) AS runs
    FROM done
)
SELECT queue, b, sum(state = 'succeeded'), sum(state = 'failed'), avg(run),
       max(CASE WHEN n = (95 * runs + 99) / 100 THEN run END), avg(wait)
FROM ranked GROUP BY queue, b ORDER BY b, queue

-- name: changes
SELECT e.id, e.at, e.kind, coalesce(j.id, e.ref), e.state, coalesce(j.task, e.task), coalesce(j.queue, e.queue),
       j.progress, j.progress_message, j.attempts, j.started_at
FROM conveyor_changes e LEFT JOIN conveyor_jobs j ON j.seq = e.job
WHERE e.id > ? ORDER BY e.id LIMIT ?

-- name: new_jobs
SELECT seq, coalesce(updated_at, created_at), id, state, task, queue, progress, progress_message, attempts,
       started_at
FROM conveyor_jobs WHERE seq > ? ORDER BY seq LIMIT ?

-- name: last_change
SELECT (SELECT coalesce(max(id), 0) FROM conveyor_changes), (SELECT coalesce(min(id), 0) FROM conveyor_changes),
       (SELECT coalesce(max(seq), 0) FROM conveyor_jobs)

-- name: oldest_event
SELECT at FROM conveyor_changes ORDER BY id LIMIT 1

-- name: prune_events_by_count
DELETE FROM conveyor_changes WHERE id <= (SELECT max(id) FROM conveyor_changes) - :keep

-- name: prune_events_by_age
-- Ids follow time, so everything before the first young event is old; the newest row always stays,
-- so ids never restart (which would confuse cursors).
DELETE FROM conveyor_changes
WHERE id < coalesce((SELECT id FROM conveyor_changes WHERE at >= :cutoff ORDER BY id LIMIT 1),
                    (SELECT max(id) FROM conveyor_changes))
