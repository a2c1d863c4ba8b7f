-- Conveyor's PostgreSQL schema, version 1: jobs, queues, workers, the change log and the outbox.
-- Applied by `conveyor migrate APP` (conveyor.brokers.postgres.schema), inside one transaction
-- under an advisory lock. {s} is the schema (quoted), {channel} the NOTIFY channel (a literal).
-- Every job lives in conveyor_jobs; "seq" orders the queue, "id" (UUIDv7 text) names the job.
-- Times are Unix seconds (double precision) from the client's clock, as in every store.

CREATE TABLE {s}.conveyor_jobs (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    task text NOT NULL,
    queue text NOT NULL,
    state text NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    payload bytea NOT NULL,
    key text,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 1,
    timeout double precision,
    created_at double precision NOT NULL,
    run_at double precision,
    started_at double precision,
    finished_at double precision,
    updated_at double precision,
    lease_until double precision,
    token bigint NOT NULL DEFAULT 0,
    consumer text,
    cancel_requested boolean NOT NULL DEFAULT false,
    progress double precision,
    progress_message text,
    result bytea,
    error jsonb,
    history jsonb,
    -- When current_job().transaction() committed the job's success with its effect.
    committed_at double precision
) WITH (fillfactor = 80);  -- room for HOT updates of the columns no index covers

-- Claimable rows only: claim time stays flat however many finished jobs the table holds.
CREATE INDEX conveyor_jobs_ready ON {s}.conveyor_jobs (queue, priority DESC, seq) WHERE state = 'queued';
CREATE INDEX conveyor_jobs_schedule ON {s}.conveyor_jobs (run_at) WHERE state = 'scheduled';
-- Leases: keyed on lease_until IS NOT NULL (set exactly while a job runs), not on state =
-- 'running', so that the batch UPDATEs by id (succeed, extend) never take this index for their
-- state test: it keeps an entry for every job that ever ran until VACUUM, and a bitmap scan of it
-- (which, unlike an index scan, never marks those entries dead) grows with the history.
CREATE INDEX conveyor_jobs_leases ON {s}.conveyor_jobs (lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX conveyor_jobs_listing ON {s}.conveyor_jobs (state, id);
CREATE INDEX conveyor_jobs_finished ON {s}.conveyor_jobs (finished_at) WHERE state IN ('succeeded', 'cancelled', 'failed');
-- Unique jobs: at most one active job per key, race-free under concurrent and bulk enqueue.
CREATE UNIQUE INDEX conveyor_jobs_key ON {s}.conveyor_jobs (key)
    WHERE key IS NOT NULL AND state IN ('queued', 'scheduled', 'running');
CREATE INDEX conveyor_jobs_any_key ON {s}.conveyor_jobs (key, seq) WHERE key IS NOT NULL;

CREATE TABLE {s}.conveyor_queues (name text PRIMARY KEY, paused boolean NOT NULL DEFAULT false);
CREATE TABLE {s}.conveyor_workers (id text PRIMARY KEY, last_seen double precision NOT NULL, info jsonb NOT NULL);

-- The change log read by changes() (the dashboard's live feed), filled by triggers so that every
-- writer (any process, any transaction, the application's own included) logs atomically with its
-- change. Read in (tx, id) order, and only up to the oldest transaction still running, so a reader
-- never skips a change that commits late. UNLOGGED: it needs no crash safety and costs no WAL.
CREATE UNLOGGED TABLE {s}.conveyor_changes (
    tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id bigint GENERATED ALWAYS AS IDENTITY,
    at double precision NOT NULL,
    kind text NOT NULL,
    job bigint,
    ref text,
    state text,
    task text,
    queue text,
    PRIMARY KEY (tx, id)
);
CREATE INDEX conveyor_changes_at ON {s}.conveyor_changes (at);

-- The outbox of a store paired with a transport: jobs that became queued and are not yet sent.
CREATE TABLE {s}.conveyor_outbox (job_id text PRIMARY KEY, marked bigint GENERATED ALWAYS AS IDENTITY);
CREATE TABLE {s}.conveyor_settings (name text PRIMARY KEY, value text NOT NULL);
-- Clients blocked in Job.result() (wait_for): a job listed here is NOTIFYed (payload: its id) when
-- it ends. Rows are few and short-lived; UNLOGGED, like the change log.
CREATE UNLOGGED TABLE {s}.conveyor_waiters (job_id text PRIMARY KEY, since double precision NOT NULL);

-- Whether pruning runs: its deletes are not logged as changes (a session setting, set per transaction).
CREATE FUNCTION {s}.conveyor_quiet() RETURNS boolean LANGUAGE sql STABLE AS
$$ SELECT coalesce(current_setting('conveyor.quiet', true), '') = 'on' $$;
-- (The triggers test the same inline: a SQL function called from PL/pgSQL is planned again at every
-- call, about a third of a one-row INSERT's server time.)
CREATE FUNCTION {s}.conveyor_outbox_on() RETURNS boolean LANGUAGE sql STABLE AS
$$ SELECT EXISTS (SELECT 1 FROM {s}.conveyor_settings WHERE name = 'outbox' AND value = 'on') $$;

-- New jobs: one log row each, one NOTIFY per queue per transaction (PostgreSQL folds identical
-- notifications of one transaction into one, delivered at commit).
CREATE FUNCTION {s}.conveyor_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.conveyor_changes (at, kind, job, state)
    SELECT n.updated_at, 'job', n.seq, n.state FROM new_rows n;
    IF EXISTS (SELECT 1 FROM {s}.conveyor_settings WHERE name = 'outbox' AND value = 'on') THEN
        INSERT INTO {s}.conveyor_outbox (job_id) SELECT n.id FROM new_rows n WHERE n.state = 'queued'
        ON CONFLICT DO NOTHING;
    END IF;
    PERFORM pg_notify({channel}, q.queue) FROM (SELECT DISTINCT n.queue FROM new_rows n WHERE n.state = 'queued') q;
    RETURN NULL;
END $$;

CREATE FUNCTION {s}.conveyor_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.conveyor_changes (at, kind, job, state)
    SELECT n.updated_at, 'job', n.seq, n.state FROM new_rows n JOIN old_rows o ON o.seq = n.seq
    WHERE n.state IS DISTINCT FROM o.state OR n.progress IS DISTINCT FROM o.progress
       OR n.progress_message IS DISTINCT FROM o.progress_message
       OR n.cancel_requested IS DISTINCT FROM o.cancel_requested OR n.started_at IS DISTINCT FROM o.started_at;
    IF EXISTS (SELECT 1 FROM {s}.conveyor_settings WHERE name = 'outbox' AND value = 'on') THEN
        INSERT INTO {s}.conveyor_outbox (job_id)
        SELECT n.id FROM new_rows n JOIN old_rows o ON o.seq = n.seq WHERE n.state = 'queued' AND o.state <> 'queued'
        ON CONFLICT DO NOTHING;
    END IF;
    PERFORM pg_notify({channel}, q.queue) FROM (
        SELECT DISTINCT n.queue FROM new_rows n JOIN old_rows o ON o.seq = n.seq
        WHERE n.state = 'queued' AND o.state <> 'queued') q;
    IF EXISTS (SELECT 1 FROM {s}.conveyor_waiters) THEN
        PERFORM pg_notify({channel}, n.id) FROM new_rows n JOIN {s}.conveyor_waiters w ON w.job_id = n.id
        WHERE n.state IN ('succeeded', 'failed', 'cancelled');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION {s}.conveyor_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT {s}.conveyor_quiet() THEN
        INSERT INTO {s}.conveyor_changes (at, kind, ref, state, task, queue)
        SELECT extract(epoch FROM clock_timestamp()), 'job', o.id, 'deleted', o.task, o.queue FROM old_rows o;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER conveyor_jobs_inserted AFTER INSERT ON {s}.conveyor_jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {s}.conveyor_jobs_inserted();
CREATE TRIGGER conveyor_jobs_updated AFTER UPDATE ON {s}.conveyor_jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {s}.conveyor_jobs_updated();
CREATE TRIGGER conveyor_jobs_deleted AFTER DELETE ON {s}.conveyor_jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {s}.conveyor_jobs_deleted();

CREATE FUNCTION {s}.conveyor_queue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.paused IS DISTINCT FROM OLD.paused THEN
        INSERT INTO {s}.conveyor_changes (at, kind, ref, state)
        VALUES (extract(epoch FROM clock_timestamp()), 'queue', NEW.name,
                CASE WHEN NEW.paused THEN 'paused' ELSE 'active' END);
        IF NOT NEW.paused THEN
            PERFORM pg_notify({channel}, NEW.name);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER conveyor_queue_changed AFTER INSERT OR UPDATE ON {s}.conveyor_queues
    FOR EACH ROW EXECUTE FUNCTION {s}.conveyor_queue_changed();

CREATE FUNCTION {s}.conveyor_worker_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO {s}.conveyor_changes (at, kind, ref, state)
        VALUES (extract(epoch FROM clock_timestamp()), 'worker', OLD.id, 'gone');
    ELSE
        INSERT INTO {s}.conveyor_changes (at, kind, ref, state) VALUES (NEW.last_seen, 'worker', NEW.id, 'seen');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER conveyor_worker_changed AFTER INSERT OR UPDATE OR DELETE ON {s}.conveyor_workers
    FOR EACH ROW EXECUTE FUNCTION {s}.conveyor_worker_changed();
