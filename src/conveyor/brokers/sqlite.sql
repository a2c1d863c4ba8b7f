-- Named queries of the SQLite broker. Each block starts with "-- name: <name>".
-- Every job lives in conveyor_jobs; "seq" (the rowid) orders the queue, "id" (UUIDv7) names the job.

-- name: schema
CREATE TABLE IF NOT EXISTS conveyor_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL,
    key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    timeout REAL,
    created_at REAL NOT NULL,
    run_at REAL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL,
    lease_until REAL,
    token INTEGER NOT NULL DEFAULT 0,
    consumer TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress REAL,
    progress_message TEXT,
    result BLOB,
    error TEXT,
    history TEXT
);
CREATE INDEX IF NOT EXISTS conveyor_jobs_ready ON conveyor_jobs (queue, priority DESC, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS conveyor_jobs_schedule ON conveyor_jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX IF NOT EXISTS conveyor_jobs_leases ON conveyor_jobs (lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS conveyor_jobs_state ON conveyor_jobs (state, id);
CREATE INDEX IF NOT EXISTS conveyor_jobs_finished ON conveyor_jobs (finished_at) WHERE state IN ('succeeded', 'cancelled');
CREATE UNIQUE INDEX IF NOT EXISTS conveyor_jobs_key ON conveyor_jobs (key)
    WHERE key IS NOT NULL AND state IN ('queued', 'scheduled', 'running');
CREATE TABLE IF NOT EXISTS conveyor_queues (name TEXT PRIMARY KEY, paused INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS conveyor_workers (id TEXT PRIMARY KEY, last_seen REAL NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conveyor_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO conveyor_meta (name, value) VALUES ('schema_version', '1');
-- For idempotent enqueues: the newest job with a key, in any state.
CREATE INDEX IF NOT EXISTS conveyor_jobs_any_key ON conveyor_jobs (key, seq) WHERE key IS NOT NULL;
-- For stats: failed jobs by finish time (succeeded ones use conveyor_jobs_finished).
CREATE INDEX IF NOT EXISTS conveyor_jobs_failed ON conveyor_jobs (finished_at) WHERE state = 'failed';
-- The change log read by changes(), filled by triggers so that every write path (of any process)
-- records its changes atomically with them. New jobs need no entry: changes() reads them by seq,
-- which keeps enqueue as fast as before. A job's entry holds its seq (joined at read time) and
-- the state it entered; a deleted job's, its id, task and queue. "ref" names a queue or a worker.
-- (An early version logged into conveyor_events, with a trigger on insert: gone.)
DROP TRIGGER IF EXISTS conveyor_jobs_inserted;
DROP TRIGGER IF EXISTS conveyor_jobs_changed;
DROP TRIGGER IF EXISTS conveyor_jobs_deleted;
DROP TRIGGER IF EXISTS conveyor_queues_inserted;
DROP TRIGGER IF EXISTS conveyor_queues_changed;
DROP TRIGGER IF EXISTS conveyor_workers_seen;
DROP TRIGGER IF EXISTS conveyor_workers_beat;
DROP TRIGGER IF EXISTS conveyor_workers_gone;
DROP TABLE IF EXISTS conveyor_events;
CREATE TABLE IF NOT EXISTS conveyor_changes (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    job INTEGER,
    ref TEXT,
    state TEXT,
    task TEXT,
    queue TEXT
);
-- A job's start mark (started_at) is a change too; conveyor_changes_job_updated did not log it.
DROP TRIGGER IF EXISTS conveyor_changes_job_updated;
CREATE TRIGGER IF NOT EXISTS conveyor_changes_job_changed
AFTER UPDATE OF state, progress, progress_message, cancel_requested, started_at ON conveyor_jobs
WHEN NEW.state IS NOT OLD.state OR NEW.progress IS NOT OLD.progress
     OR NEW.progress_message IS NOT OLD.progress_message OR NEW.cancel_requested IS NOT OLD.cancel_requested
     OR NEW.started_at IS NOT OLD.started_at
BEGIN
    INSERT INTO conveyor_changes (at, kind, job, state) VALUES (NEW.updated_at, 'job', NEW.seq, NEW.state);
END;
CREATE TRIGGER IF NOT EXISTS conveyor_changes_job_deleted AFTER DELETE ON conveyor_jobs BEGIN
    INSERT INTO conveyor_changes (at, kind, ref, state, task, queue)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, 'job', OLD.id, 'deleted', OLD.task, OLD.queue);
END;
CREATE TRIGGER IF NOT EXISTS conveyor_changes_queue_added AFTER INSERT ON conveyor_queues BEGIN
    INSERT INTO conveyor_changes (at, kind, ref, state)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, 'queue', NEW.name, CASE WHEN NEW.paused THEN 'paused' ELSE 'active' END);
END;
CREATE TRIGGER IF NOT EXISTS conveyor_changes_queue_updated AFTER UPDATE OF paused ON conveyor_queues
WHEN NEW.paused IS NOT OLD.paused BEGIN
    INSERT INTO conveyor_changes (at, kind, ref, state)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, 'queue', NEW.name, CASE WHEN NEW.paused THEN 'paused' ELSE 'active' END);
END;
CREATE TRIGGER IF NOT EXISTS conveyor_changes_worker_added AFTER INSERT ON conveyor_workers BEGIN
    INSERT INTO conveyor_changes (at, kind, ref, state) VALUES (NEW.last_seen, 'worker', NEW.id, 'seen');
END;
CREATE TRIGGER IF NOT EXISTS conveyor_changes_worker_beat AFTER UPDATE ON conveyor_workers BEGIN
    INSERT INTO conveyor_changes (at, kind, ref, state) VALUES (NEW.last_seen, 'worker', NEW.id, 'seen');
END;
CREATE TRIGGER IF NOT EXISTS conveyor_changes_worker_gone AFTER DELETE ON conveyor_workers BEGIN
    INSERT INTO conveyor_changes (at, kind, ref, state)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, 'worker', OLD.id, 'gone');
END;

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
UPDATE conveyor_jobs
SET state = CASE WHEN cancel_requested AND :state = 'scheduled' THEN 'cancelled' ELSE :state END,
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
SET state = CASE WHEN cancel_requested THEN 'cancelled' WHEN :run_at > :now THEN 'scheduled' ELSE 'queued' END,
    attempts = attempts - 1, error = coalesce(:error, error),
    finished_at = CASE WHEN cancel_requested THEN :now ELSE finished_at END,
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
SET state = CASE WHEN cancel_requested THEN 'cancelled' WHEN attempts >= max_attempts THEN 'failed'
                 ELSE 'queued' END,
    error = CASE WHEN NOT cancel_requested AND attempts >= max_attempts THEN :error ELSE error END,
    finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN :now ELSE NULL END,
    history = json_insert(coalesce(history, '[]'), '$[#]',
                          json_object('attempt', attempts, 'at', :now, 'state', 'lost', 'error', json(:error))),
    run_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN run_at ELSE :now END, updated_at = :now, lease_until = NULL, consumer = NULL
WHERE state = 'running' AND {where}

-- name: cancel_waiting
UPDATE conveyor_jobs SET state = 'cancelled', finished_at = :now, updated_at = :now
WHERE id = :id AND state IN ('queued', 'scheduled')

-- name: cancel_running
UPDATE conveyor_jobs SET cancel_requested = 1, updated_at = :now WHERE id = :id AND state = 'running'

-- name: retry_by_hand
UPDATE conveyor_jobs
SET state = 'queued', attempts = 0, error = NULL, finished_at = NULL, cancel_requested = 0,
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
