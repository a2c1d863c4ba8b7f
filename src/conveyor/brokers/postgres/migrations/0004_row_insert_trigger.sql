-- Version 4: a single enqueue without the fixed costs of a statement trigger (measured in
-- bench/postgres.py, per-insert round robin: about 35 µs of server time per one-row INSERT for the
-- transition table and the three statements run over it, and 20 µs for the outbox setting's
-- look-up, of a 520 µs insert-and-commit).
--
-- 1. The store's single enqueue sets `conveyor.one_row` for its transaction (in the INSERT
--    itself, before its row is made) and is logged and NOTIFYed by a row trigger. Every other
--    INSERT (COPY, a batch, an application's own) is logged by the statement trigger once for all
--    its rows, as before. The two triggers test the same setting with opposite conditions, so
--    exactly one of them sees each row, whoever wrote it.
-- 2. The outbox is filled at insert by two more triggers (row and statement, split the same
--    way) that exist only once a paired broker turned the outbox on (conveyor_turn_outbox_on):
--    an unpaired store's insert no longer reads conveyor_settings. An UPDATE that makes a job
--    queued again still reads it, as only re-queues pay it.

CREATE OR REPLACE FUNCTION {s}.conveyor_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.conveyor_changes (at, kind, job, state)
    SELECT n.updated_at, 'job', n.seq, n.state FROM new_rows n;
    PERFORM pg_notify({channel}, q.queue) FROM (SELECT DISTINCT n.queue FROM new_rows n WHERE n.state = 'queued') q;
    RETURN NULL;
END $$;

CREATE FUNCTION {s}.conveyor_job_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.conveyor_changes (at, kind, job, state) VALUES (NEW.updated_at, 'job', NEW.seq, NEW.state);
    IF NEW.state = 'queued' THEN
        PERFORM pg_notify({channel}, NEW.queue);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION {s}.conveyor_jobs_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.conveyor_outbox (job_id) SELECT n.id FROM new_rows n WHERE n.state = 'queued'
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE FUNCTION {s}.conveyor_job_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.conveyor_outbox (job_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

DROP TRIGGER conveyor_jobs_inserted ON {s}.conveyor_jobs;
CREATE TRIGGER conveyor_jobs_inserted AFTER INSERT ON {s}.conveyor_jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    WHEN (current_setting('conveyor.one_row', true) IS DISTINCT FROM 'on') EXECUTE FUNCTION {s}.conveyor_jobs_inserted();
CREATE TRIGGER conveyor_job_inserted AFTER INSERT ON {s}.conveyor_jobs FOR EACH ROW
    WHEN (current_setting('conveyor.one_row', true) = 'on') EXECUTE FUNCTION {s}.conveyor_job_inserted();

-- Turn the outbox on (idempotent): the insert triggers that mark new jobs, the setting read by the
-- UPDATE trigger, and, the first time, a mark for every job already queued. Run by a paired store
-- when it opens (and by `conveyor migrate` of a paired application): creating a trigger takes the
-- TRIGGER privilege on conveyor_jobs, which its owner has.
CREATE FUNCTION {s}.conveyor_turn_outbox_on() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = '{s}.conveyor_jobs'::regclass
                   AND tgname = 'conveyor_job_outbox') THEN
        -- The lock CREATE TRIGGER takes anyway, taken first: no insert commits between the
        -- triggers and the setting, and two stores turning it on at once take turns.
        LOCK TABLE {s}.conveyor_jobs IN SHARE ROW EXCLUSIVE MODE;
        CREATE OR REPLACE TRIGGER conveyor_job_outbox AFTER INSERT ON {s}.conveyor_jobs FOR EACH ROW
            WHEN (NEW.state = 'queued' AND current_setting('conveyor.one_row', true) = 'on')
            EXECUTE FUNCTION {s}.conveyor_job_outbox();
        CREATE OR REPLACE TRIGGER conveyor_jobs_outbox AFTER INSERT ON {s}.conveyor_jobs
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
            WHEN (current_setting('conveyor.one_row', true) IS DISTINCT FROM 'on') EXECUTE FUNCTION {s}.conveyor_jobs_outbox();
    END IF;
    INSERT INTO {s}.conveyor_settings (name, value) VALUES ('outbox', 'on') ON CONFLICT (name) DO NOTHING;
    IF FOUND THEN  -- the first time: the jobs queued before have no delivery yet
        INSERT INTO {s}.conveyor_outbox (job_id)
        SELECT id FROM {s}.conveyor_jobs WHERE state = 'queued' ORDER BY seq ON CONFLICT DO NOTHING;
    END IF;
END $$;

-- A schema whose outbox was on before this version gets its insert triggers now.
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM {s}.conveyor_settings WHERE name = 'outbox' AND value = 'on') THEN
        PERFORM {s}.conveyor_turn_outbox_on();
    END IF;
END $$;
