-- Version 4: an unpaired store's INSERT no longer reads conveyor_settings (the outbox flag): about
-- 20 µs of server time per statement, the most of a single enqueue's trigger cost after the
-- change-log row itself (measured in bench/postgres.py and per-insert round robins).
--
-- The insert trigger logs and NOTIFYs only. New jobs are put in the outbox by a trigger of their
-- own that exists only once a paired broker turned the outbox on (conveyor_turn_outbox_on). An
-- UPDATE that makes a job queued again still reads the setting: only re-queues pay it.
-- (A row trigger for one-row INSERTs was measured too: marking the statement for it cost as much
-- as it saved, and its WHEN test cost every row of a COPY.)

CREATE OR REPLACE FUNCTION {s}.conveyor_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.conveyor_changes (at, kind, job, state)
    SELECT n.updated_at, 'job', n.seq, n.state FROM new_rows n;
    PERFORM pg_notify({channel}, q.queue) FROM (SELECT DISTINCT n.queue FROM new_rows n WHERE n.state = 'queued') q;
    RETURN NULL;
END $$;

CREATE FUNCTION {s}.conveyor_jobs_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.conveyor_outbox (job_id) SELECT n.id FROM new_rows n WHERE n.state = 'queued'
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

-- Turn the outbox on (idempotent): the insert trigger that marks new jobs, the setting read by the
-- UPDATE trigger, and, the first time, a mark for every job already queued. Run by a paired store
-- when it opens (and by `conveyor migrate` of a paired application): creating a trigger takes the
-- TRIGGER privilege on conveyor_jobs, which its owner has.
CREATE FUNCTION {s}.conveyor_turn_outbox_on() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = '{s}.conveyor_jobs'::regclass
                   AND tgname = 'conveyor_jobs_outbox') THEN
        -- The lock CREATE TRIGGER takes anyway, taken first: no insert commits between the
        -- trigger and the setting, and two stores turning it on at once take turns.
        LOCK TABLE {s}.conveyor_jobs IN SHARE ROW EXCLUSIVE MODE;
        CREATE OR REPLACE TRIGGER conveyor_jobs_outbox AFTER INSERT ON {s}.conveyor_jobs
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {s}.conveyor_jobs_outbox();
    END IF;
    INSERT INTO {s}.conveyor_settings (name, value) VALUES ('outbox', 'on') ON CONFLICT (name) DO NOTHING;
    IF FOUND THEN  -- the first time: the jobs queued before have no delivery yet
        INSERT INTO {s}.conveyor_outbox (job_id)
        SELECT id FROM {s}.conveyor_jobs WHERE state = 'queued' ORDER BY seq ON CONFLICT DO NOTHING;
    END IF;
END $$;

-- A schema whose outbox was on before this version gets its insert trigger now.
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM {s}.conveyor_settings WHERE name = 'outbox' AND value = 'on') THEN
        PERFORM {s}.conveyor_turn_outbox_on();
    END IF;
END $$;
