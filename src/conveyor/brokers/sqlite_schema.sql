-- The schema of the SQLite broker, run by SQLiteBroker.open() (every statement is idempotent, and
-- older layouts are upgraded in place). Its named queries are in sqlite_queries.sql.
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
