-- Named queries of the PostgreSQL store. Each block starts with "-- name: <name>"; {s} is the
-- schema (quoted). The tables are made by migrations/*.sql. Parameters are psycopg's %(name)s; the
-- arrays of a worker's statements are %(name)b, sent in binary: psycopg's text form of an array
-- quotes each element through a regular expression, three times the client CPU of the binary one
-- (48-job acks: 0.8-1.1 against 0.3 ms). "insert" and "existing" stay %(name)s: enqueue(connection=)
-- runs them on other drivers too.

-- name: insert
-- One statement for a whole batch, in message order (seq is the FIFO order). A unique key held by
-- an active job, or an id already written (a retried batch), inserts nothing for that row.
INSERT INTO {s}.conveyor_jobs (id, task, queue, state, priority, payload, key, max_attempts, timeout,
                               created_at, run_at, updated_at)
SELECT * FROM unnest(%(id)s::text[], %(task)s::text[], %(queue)s::text[], %(state)s::text[], %(priority)s::int[],
                     %(payload)s::bytea[], %(key)s::text[], %(max_attempts)s::int[], %(timeout)s::float8[],
                     %(created_at)s::float8[], %(run_at)s::float8[], %(updated_at)s::float8[])
ON CONFLICT DO NOTHING
RETURNING id

-- name: insert_one
-- The insert of one key-less message (single enqueue), without the arrays, and without ON CONFLICT:
-- a speculative insertion checks every unique index first and writes one more WAL record. A reused
-- id (a retried enqueue) fails on the id's index instead, and goes through "insert".
INSERT INTO {s}.conveyor_jobs (id, task, queue, state, priority, payload, max_attempts, timeout,
                               created_at, run_at, updated_at)
VALUES (%(id)s, %(task)s, %(queue)s, %(state)s, %(priority)s, %(payload)s, %(max_attempts)s,
        %(timeout)s, %(created_at)s, %(run_at)s, %(updated_at)s)

-- name: copy
-- A batch without keys: COPY, the cheapest bulk load (the statement triggers fire as for INSERT). A
-- retried batch whose rows exist already fails on the id and goes through "insert" instead.
COPY {s}.conveyor_jobs (id, task, queue, state, priority, payload, max_attempts, timeout,
                        created_at, run_at, updated_at) FROM STDIN (FORMAT BINARY)

-- name: wait_on
-- Job.result(): NOTIFY me (payload: the job's id) when this job ends, and read the job, in one
-- statement (a pipeline of three cost a round trip as much again). The waiter rows of this
-- process's earlier waits, and any older than an hour, go in the same statement (not this job's own:
-- an INSERT in one statement with a DELETE of the same row would not see it gone).
WITH off AS (DELETE FROM {s}.conveyor_waiters
             WHERE (job_id = ANY(%(done)b::text[]) OR since < %(stale)s) AND job_id <> %(id)s),
     added AS (INSERT INTO {s}.conveyor_waiters (job_id, since) VALUES (%(id)s, %(now)s)
               ON CONFLICT (job_id) DO NOTHING)
SELECT * FROM {s}.conveyor_jobs WHERE id = %(id)s

-- name: existing
-- For rows the insert skipped: the row itself (a retried batch), else the active job holding its key.
SELECT u.id, coalesce(j.id, k.id)
FROM unnest(%(id)s::text[], %(key)s::text[]) AS u(id, key)
LEFT JOIN {s}.conveyor_jobs j ON j.id = u.id
LEFT JOIN {s}.conveyor_jobs k ON k.key = u.key AND k.state IN ('queued', 'scheduled', 'running')

-- name: promote
-- In seq order, skipping rows another claimer is promoting: claimers promoting at once never
-- deadlock (each waiting for a row the other locked first); the skipped rows are queued by it.
UPDATE {s}.conveyor_jobs j SET state = 'queued', updated_at = %(now)s
FROM (SELECT seq FROM {s}.conveyor_jobs WHERE state = 'scheduled' AND run_at <= %(now)s
      ORDER BY seq FOR UPDATE SKIP LOCKED) due
WHERE j.seq = due.seq

-- name: next_due
SELECT min(run_at) FROM {s}.conveyor_jobs WHERE state = 'scheduled'

-- name: claim
-- The batch claim: each wanted queue (in order of preference, paused ones skipped) gives its best
-- rows by priority then FIFO, skipping rows another claimer holds; the UPDATE leases them. Each row
-- also says when the next scheduled job falls due (an InitPlan: read once per claim).
WITH wanted AS (
    SELECT q.name, q.pos FROM unnest(%(queues)b::text[]) WITH ORDINALITY AS q(name, pos)
    WHERE NOT EXISTS (SELECT 1 FROM {s}.conveyor_queues p WHERE p.name = q.name AND p.paused)
), picked AS (
    SELECT c.seq FROM wanted w CROSS JOIN LATERAL (
        SELECT j.seq, j.priority FROM {s}.conveyor_jobs j
        WHERE j.state = 'queued' AND j.queue = w.name
        ORDER BY j.priority DESC, j.seq LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED) c
    ORDER BY w.pos, c.priority DESC, c.seq LIMIT %(limit)s
)
UPDATE {s}.conveyor_jobs j
SET state = 'running', attempts = j.attempts + 1, token = j.token + 1, lease_until = %(deadline)s,
    consumer = %(consumer)s, started_at = NULL, updated_at = %(now)s, cancel_requested = false
FROM picked WHERE j.seq = picked.seq
RETURNING j.id, j.token, j.task, j.queue, j.payload, j.attempts, j.max_attempts, j.timeout, j.lease_until,
          j.priority, j.seq, (SELECT min(run_at) FROM {s}.conveyor_jobs WHERE state = 'scheduled') AS next_due

-- name: succeed
UPDATE {s}.conveyor_jobs j
SET state = 'succeeded', result = u.result, started_at = coalesce(u.started_at, j.started_at),
    finished_at = coalesce(j.committed_at, u.finished_at), updated_at = %(now)s, lease_until = NULL, consumer = NULL
FROM unnest(%(id)b::text[], %(token)b::bigint[], %(result)b::bytea[], %(started_at)b::float8[],
            %(finished_at)b::float8[]) AS u(id, token, result, started_at, finished_at)
WHERE j.id = u.id AND j.token = u.token AND j.state = 'running'
RETURNING j.id

-- name: settle
-- A job whose cancellation was requested is never queued again: its retry cancels it instead. A job
-- whose success a transaction committed (current_job().transaction()) has succeeded, whatever came after.
UPDATE {s}.conveyor_jobs
SET state = CASE WHEN committed_at IS NOT NULL THEN 'succeeded'
                 WHEN cancel_requested AND %(state)s = 'scheduled' THEN 'cancelled' ELSE %(state)s END,
    result = coalesce(%(result)s, result), error = coalesce(%(error)s::jsonb, error),
    started_at = coalesce(%(started_at)s, started_at),
    finished_at = CASE WHEN %(state)s IN ('failed', 'cancelled') OR cancel_requested THEN %(finished_at)s
                       ELSE finished_at END,
    run_at = CASE WHEN %(state)s = 'scheduled' AND NOT cancel_requested THEN coalesce(%(run_at)s, %(now)s)
                  ELSE run_at END,
    history = coalesce(history, '[]'::jsonb)
              || jsonb_build_array(%(entry)s::jsonb || jsonb_build_object('attempt', attempts)),
    updated_at = %(now)s, lease_until = NULL, consumer = NULL
WHERE id = %(id)s AND token = %(token)s AND state = 'running'

-- name: hand_back
-- Not an attempt. Scheduled when it names a later run_at (a back-off); its error, when given, is kept.
UPDATE {s}.conveyor_jobs
SET state = CASE WHEN committed_at IS NOT NULL THEN 'succeeded' WHEN cancel_requested THEN 'cancelled'
                 WHEN %(run_at)s > %(now)s THEN 'scheduled' ELSE 'queued' END,
    attempts = attempts - 1, error = coalesce(%(error)s::jsonb, error),
    finished_at = CASE WHEN committed_at IS NOT NULL THEN committed_at WHEN cancel_requested THEN %(now)s
                       ELSE finished_at END,
    run_at = CASE WHEN cancel_requested OR committed_at IS NOT NULL THEN run_at WHEN %(run_at)s > %(now)s THEN %(run_at)s ELSE %(now)s END,
    updated_at = %(now)s, lease_until = NULL, consumer = NULL
WHERE id = %(id)s AND token = %(token)s AND state = 'running'

-- name: mark_started
UPDATE {s}.conveyor_jobs j SET started_at = u.at, updated_at = %(now)s
FROM unnest(%(id)b::text[], %(token)b::bigint[], %(at)b::float8[]) AS u(id, token, at)
WHERE j.id = u.id AND j.token = u.token AND j.state = 'running'

-- name: reserved
SELECT queue, count(*) FROM {s}.conveyor_jobs
WHERE state = 'running' AND lease_until IS NOT NULL AND started_at IS NULL GROUP BY queue

-- name: extend
-- Rows another transaction holds (an ack of a job that just ended, a cancellation) are skipped, not
-- waited for: an extend never waits, so it never deadlocks with an ack locking rows in another order.
WITH mine AS (
    SELECT j.seq FROM {s}.conveyor_jobs j
    JOIN unnest(%(id)b::text[], %(token)b::bigint[]) AS u(id, token) ON j.id = u.id AND j.token = u.token
    WHERE j.state = 'running'
    FOR NO KEY UPDATE OF j SKIP LOCKED
)
UPDATE {s}.conveyor_jobs j SET lease_until = %(deadline)s
FROM mine WHERE j.seq = mine.seq
RETURNING j.id, j.cancel_requested

-- name: still_held
-- Of the leases an extend skipped, those still held (their row was locked, not lost).
SELECT j.id, j.cancel_requested FROM {s}.conveyor_jobs j
JOIN unnest(%(id)b::text[], %(token)b::bigint[]) AS u(id, token) ON j.id = u.id AND j.token = u.token
WHERE j.state = 'running'

-- name: progress
UPDATE {s}.conveyor_jobs SET progress = %(fraction)s, progress_message = %(message)s, updated_at = %(now)s
WHERE id = %(id)s AND token = %(token)s AND state = 'running'

-- name: lose
-- Back to the queue; failed when out of attempts; cancelled when its cancellation was requested;
-- succeeded when its transaction committed its success (the process died after the commit).
-- Rows locked by another statement (a late ack, another supervisor's recover) are skipped, not
-- waited for in whatever order: two of them at once never deadlock; a skipped row is left to it.
WITH gone AS (
    SELECT seq FROM {s}.conveyor_jobs WHERE state = 'running' AND {where} ORDER BY seq FOR UPDATE SKIP LOCKED
)
UPDATE {s}.conveyor_jobs j
SET state = CASE WHEN committed_at IS NOT NULL THEN 'succeeded' WHEN cancel_requested THEN 'cancelled'
                 WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
    error = CASE WHEN committed_at IS NULL AND NOT cancel_requested AND attempts >= max_attempts
                 THEN %(error)s::jsonb ELSE error END,
    finished_at = CASE WHEN committed_at IS NOT NULL THEN committed_at
                       WHEN cancel_requested OR attempts >= max_attempts THEN %(now)s ELSE NULL END,
    history = coalesce(history, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
        'attempt', attempts, 'at', %(now)s::float8, 'state', 'lost', 'error', %(error)s::jsonb)),
    run_at = CASE WHEN committed_at IS NOT NULL OR cancel_requested OR attempts >= max_attempts THEN run_at
                  ELSE %(now)s END,
    updated_at = %(now)s, lease_until = NULL, consumer = NULL
FROM gone WHERE j.seq = gone.seq

-- name: cancel
-- Queued or scheduled: cancelled; running: cancellation requested. The state after, or no row.
WITH waiting AS (
    UPDATE {s}.conveyor_jobs SET state = 'cancelled', finished_at = %(now)s, updated_at = %(now)s
    WHERE id = %(id)s AND state IN ('queued', 'scheduled') RETURNING state
), running AS (
    UPDATE {s}.conveyor_jobs SET cancel_requested = true, updated_at = %(now)s
    WHERE id = %(id)s AND state = 'running' AND NOT cancel_requested RETURNING state
)
SELECT coalesce((SELECT state FROM waiting), (SELECT state FROM running),
                (SELECT state FROM {s}.conveyor_jobs WHERE id = %(id)s))

-- name: retry_by_hand
UPDATE {s}.conveyor_jobs
SET state = 'queued', attempts = 0, error = NULL, finished_at = NULL, cancel_requested = false, committed_at = NULL,
    run_at = %(now)s, updated_at = %(now)s
WHERE id = %(id)s AND state IN ('failed', 'cancelled')

-- name: commit_success
-- In the task's own transaction (current_job().transaction()): its success commits with its effect.
UPDATE {s}.conveyor_jobs SET committed_at = %(now)s, updated_at = %(now)s
WHERE id = %(id)s AND token = %(token)s AND state = 'running' AND committed_at IS NULL

-- name: state_of
SELECT state FROM {s}.conveyor_jobs WHERE id = %(id)s

-- name: delete
DELETE FROM {s}.conveyor_jobs WHERE id = %(id)s AND state <> 'running'

-- name: pause
INSERT INTO {s}.conveyor_queues (name, paused) VALUES (%(name)s, %(paused)s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused

-- name: paused
SELECT name FROM {s}.conveyor_queues WHERE paused

-- name: purge
DELETE FROM {s}.conveyor_jobs WHERE state = ANY(%(states)s::text[]) AND (%(queue)s::text IS NULL OR queue = %(queue)s)

-- name: prune_batch
-- Retention: at most %(batch)s rows per statement, by the finished_at index, so the queue is never
-- locked and a big backlog is deleted in many short transactions.
DELETE FROM {s}.conveyor_jobs WHERE seq IN (
    SELECT seq FROM {s}.conveyor_jobs
    WHERE state IN ('succeeded', 'cancelled') AND finished_at < %(cutoff)s
    LIMIT %(batch)s)

-- name: quiet
SELECT set_config('conveyor.quiet', 'on', true)

-- name: get
SELECT * FROM {s}.conveyor_jobs WHERE id = %(id)s

-- name: get_many
SELECT * FROM {s}.conveyor_jobs WHERE id = ANY(%(ids)s::text[])

-- name: counts
SELECT queue, state, count(*) FROM {s}.conveyor_jobs GROUP BY queue, state

-- name: heartbeat
INSERT INTO {s}.conveyor_workers (id, last_seen, info) VALUES (%(id)s, %(now)s, %(info)s)
ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, info = excluded.info

-- name: unregister
DELETE FROM {s}.conveyor_workers WHERE id = %(id)s

-- name: workers
SELECT info FROM {s}.conveyor_workers WHERE last_seen >= %(since)s

-- name: forget_workers
DELETE FROM {s}.conveyor_workers WHERE last_seen < %(before)s

-- name: find_by_key
SELECT * FROM {s}.conveyor_jobs WHERE key = %(key)s ORDER BY seq DESC LIMIT 1

-- name: stats
-- Finished jobs since %(since)s, one row per queue, bucket and state, with the p95 run time.
SELECT queue, floor((finished_at - %(since)s) / %(bucket)s)::bigint AS b,
       count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'failed'),
       avg(finished_at - started_at),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY finished_at - started_at),
       avg(started_at - created_at)
FROM {s}.conveyor_jobs
WHERE state IN ('succeeded', 'failed') AND finished_at >= %(since)s
GROUP BY queue, b ORDER BY b, queue

-- name: changes
-- The changes committed after the snapshot %(prev)s and visible in %(cur)s (this statement's own
-- snapshot when null), after the position %(tx)s-%(id)s among them. A transaction still running at
-- %(prev)s is not visible in it, so its changes come whenever it commits, whatever their ids.
WITH snap AS (SELECT coalesce(%(cur)s::pg_snapshot, pg_current_snapshot()) AS cur)
SELECT snap.cur::text, c.tx::text, c.id, c.at, c.kind, coalesce(j.id, c.ref), c.state, coalesce(j.task, c.task),
       coalesce(j.queue, c.queue), j.progress, j.progress_message, j.attempts, j.started_at
FROM snap, {s}.conveyor_changes c LEFT JOIN {s}.conveyor_jobs j ON j.seq = c.job
WHERE c.tx >= pg_snapshot_xmin(%(prev)s::pg_snapshot)
  AND NOT pg_visible_in_snapshot(c.tx, %(prev)s::pg_snapshot) AND pg_visible_in_snapshot(c.tx, snap.cur)
  AND (c.tx, c.id) > (%(tx)s::xid8, %(id)s::bigint)
ORDER BY c.tx, c.id LIMIT %(limit)s

-- name: change_bounds
-- The snapshot of "now", its xmax, and how far the log was trimmed (a reader whose snapshot is
-- older than that missed changes: it must reload).
SELECT pg_current_snapshot()::text, pg_snapshot_xmax(pg_current_snapshot())::text,
       (SELECT value FROM {s}.conveyor_settings WHERE name = 'changes_trimmed')

-- name: trim_changes
-- Old changes go: every change before the first one (in (tx, id) order, the primary key's) that is
-- young enough to keep, or before the newest when none is. The newest always stays, and the trim's
-- end is kept for the cursors it outdated.
WITH edge AS (
    SELECT coalesce(
        (SELECT ROW(tx, id) FROM {s}.conveyor_changes WHERE at >= %(cutoff)s ORDER BY tx, id LIMIT 1),
        (SELECT ROW(tx, id) FROM {s}.conveyor_changes ORDER BY tx DESC, id DESC LIMIT 1)) AS k
), gone AS (
    DELETE FROM {s}.conveyor_changes c USING edge
    WHERE ROW(c.tx, c.id) < edge.k
    RETURNING c.tx, c.id
)
INSERT INTO {s}.conveyor_settings (name, value)
SELECT 'changes_trimmed', tx::text || '-' || id FROM gone ORDER BY tx DESC, id DESC LIMIT 1
ON CONFLICT (name) DO UPDATE SET value = excluded.value

-- name: migrations
SELECT value FROM {s}.conveyor_settings WHERE name = 'schema_version'

-- name: outbox_on
-- From now on the triggers mark every job that becomes queued; the jobs queued before have no delivery.
SELECT {s}.conveyor_turn_outbox_on()

-- name: outbox_fill
INSERT INTO {s}.conveyor_outbox (job_id) SELECT id FROM {s}.conveyor_jobs WHERE state = 'queued' ORDER BY seq
ON CONFLICT DO NOTHING

-- name: outbox
SELECT o.job_id, j.queue, j.priority, j.seq, j.state
FROM {s}.conveyor_outbox o LEFT JOIN {s}.conveyor_jobs j ON j.id = o.job_id
ORDER BY o.marked LIMIT %(limit)s

-- name: outbox_of
SELECT o.job_id, j.queue, j.priority, j.seq, j.state
FROM {s}.conveyor_outbox o LEFT JOIN {s}.conveyor_jobs j ON j.id = o.job_id
WHERE o.job_id = ANY(%(ids)s::text[]) ORDER BY o.marked

-- name: unmark
DELETE FROM {s}.conveyor_outbox WHERE job_id = ANY(%(ids)s::text[])

-- name: any_due
SELECT 1 FROM {s}.conveyor_jobs WHERE state = 'scheduled' AND run_at <= %(now)s LIMIT 1

-- name: claim_ids
-- As the claim of fetch, for jobs a transport delivered: only queued ones of unpaused queues.
UPDATE {s}.conveyor_jobs
SET state = 'running', attempts = attempts + 1, token = token + 1, lease_until = %(deadline)s,
    consumer = %(consumer)s, started_at = NULL, updated_at = %(now)s, cancel_requested = false
WHERE id = ANY(%(ids)b::text[]) AND state = 'queued'
  AND queue NOT IN (SELECT name FROM {s}.conveyor_queues WHERE paused)
RETURNING id, token, task, queue, payload, attempts, max_attempts, timeout, lease_until, priority
