-- Named queries of a SQLite store paired with a transport (brokers/sqlite_pairing.py).
-- The outbox holds the ids of jobs that became 'queued' and whose delivery has not been sent yet.
-- Only connections of a paired store fill it, through TEMP triggers (they live and die with the
-- connection), so a store that claims natively never pays for it.

-- name: outbox_schema
CREATE TABLE IF NOT EXISTS conveyor_outbox (id TEXT PRIMARY KEY);
CREATE TEMP TRIGGER IF NOT EXISTS conveyor_outbox_inserted AFTER INSERT ON main.conveyor_jobs
WHEN NEW.state = 'queued'
BEGIN
    INSERT OR IGNORE INTO conveyor_outbox (id) VALUES (NEW.id);
END;
CREATE TEMP TRIGGER IF NOT EXISTS conveyor_outbox_queued AFTER UPDATE OF state ON main.conveyor_jobs
WHEN NEW.state = 'queued' AND OLD.state IS NOT 'queued'
BEGIN
    INSERT OR IGNORE INTO conveyor_outbox (id) VALUES (NEW.id);
END;
-- The first time a database is paired, the jobs already queued have no delivery yet.
INSERT OR IGNORE INTO conveyor_outbox (id)
SELECT id FROM conveyor_jobs WHERE state = 'queued' AND NOT EXISTS (SELECT 1 FROM conveyor_meta WHERE name = 'outbox')
ORDER BY seq;
INSERT OR IGNORE INTO conveyor_meta (name, value) VALUES ('outbox', '1');

-- name: any_due
-- A read first: most fetches find nothing due and need no write lock.
SELECT 1 FROM conveyor_jobs WHERE state = 'scheduled' AND run_at <= ? LIMIT 1

-- name: outbox_fill
INSERT OR IGNORE INTO conveyor_outbox (id) SELECT id FROM conveyor_jobs WHERE state = 'queued' ORDER BY seq

-- name: outbox
SELECT o.id, j.queue, j.priority, j.seq, j.state
FROM conveyor_outbox AS o LEFT JOIN conveyor_jobs AS j ON j.id = o.id
ORDER BY o.rowid LIMIT ?

-- name: outbox_of
SELECT o.id, j.queue, j.priority, j.seq, j.state
FROM conveyor_outbox AS o LEFT JOIN conveyor_jobs AS j ON j.id = o.id
WHERE o.id IN ({ids}) ORDER BY o.rowid

-- name: unmark
DELETE FROM conveyor_outbox WHERE id = ?

-- name: claim_ids
-- As the claim of fetch, for jobs a transport delivered: only queued ones of unpaused queues.
UPDATE conveyor_jobs
SET state = 'running', attempts = attempts + 1, token = token + 1, lease_until = ?,
    consumer = ?, started_at = NULL, updated_at = ?, cancel_requested = 0
WHERE id IN ({ids}) AND state = 'queued' AND queue NOT IN (SELECT name FROM conveyor_queues WHERE paused = 1)
RETURNING id, token, task, queue, payload, attempts, max_attempts, timeout, lease_until, priority
