-- Separate PostgreSQL roles for Orbit, each allowed only the statements its code runs:
--
--   orbit_migrator  owns Orbit's tables, views and functions; migrations run as it.
--   orbit_worker    what `orbit worker` does: claim, heartbeat and finish runs, checkpoint steps,
--                   register itself, and as the fleet's leader recover interrupted runs, delete
--                   finished runs past their retention and dead workers, enqueue scheduled runs.
--   orbit_enqueuer  insert pending runs (enqueue(), enqueue_many(), `orbit enqueue`, or
--                   INSERT INTO runs (pipeline, params, ...)) and read runs and their steps.
--   orbit_operator  cancel, resume, recover, pause, unpause, drain and prune; read everything.
--   orbit_server    what `orbit serve` does: an enqueuer's and an operator's statements, and the
--                   API tokens and console sessions (`orbit token` too).
--
-- Run it as a superuser, once before the first `orbit migrate` and again after every migration:
--     psql "$DIRECT_URL" -f deploy/roles.sql
-- Each run hands Orbit's objects to orbit_migrator and sets the other roles' privileges from
-- scratch (anything granted to them on Orbit's tables before is revoked), so re-running it is
-- safe. Then give each service a login role that inherits one of them, for example:
--     CREATE ROLE deployer    LOGIN PASSWORD '...' IN ROLE orbit_migrator;
--     CREATE ROLE etl_worker  LOGIN PASSWORD '...' IN ROLE orbit_worker;
--     CREATE ROLE billing_api LOGIN PASSWORD '...' IN ROLE orbit_enqueuer;
--     CREATE ROLE oncall      LOGIN PASSWORD '...' IN ROLE orbit_operator;
--     CREATE ROLE console     LOGIN PASSWORD '...' IN ROLE orbit_server;
-- `orbit migrate` run by a member of orbit_migrator (not a superuser) switches to that role, so
-- what a migration creates belongs to orbit_migrator, not to whichever member ran it.
--
-- Only columns are granted, never whole tables: an enqueuer cannot set a run's status, result,
-- heartbeat or worker (they keep their defaults: a pending run, never claimed); a migration
-- refuses an id beyond the runs' sequence. Workers cannot touch pauses or the schema version.
-- Rows are not restricted: every worker may write every run and worker row, fenced by the
-- queue's own statements (run id, attempt, status, worker id).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orbit_migrator') THEN
        CREATE ROLE orbit_migrator NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orbit_enqueuer') THEN
        CREATE ROLE orbit_enqueuer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orbit_worker') THEN
        CREATE ROLE orbit_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orbit_operator') THEN
        CREATE ROLE orbit_operator NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orbit_server') THEN
        CREATE ROLE orbit_server NOLOGIN IN ROLE orbit_enqueuer, orbit_operator;
    END IF;
END $$;

-- Before PostgreSQL 15 every role could create objects in the public schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO orbit_migrator;
GRANT USAGE ON SCHEMA public TO orbit_enqueuer, orbit_worker, orbit_operator, orbit_server;
GRANT orbit_enqueuer, orbit_operator TO orbit_server;

-- Earlier versions of this file granted these by default on every new table; nothing is now.
ALTER DEFAULT PRIVILEGES FOR ROLE orbit_migrator IN SCHEMA public
    REVOKE ALL ON TABLES FROM orbit_worker, orbit_enqueuer;
ALTER DEFAULT PRIVILEGES FOR ROLE orbit_migrator IN SCHEMA public
    REVOKE ALL ON SEQUENCES FROM orbit_worker, orbit_enqueuer;

-- The rest needs Orbit's schema; before the first migration there is nothing to grant yet.
DO $$
BEGIN
    IF to_regclass('public.alembic_version') IS NULL OR to_regclass('public.runs') IS NULL THEN
        RAISE NOTICE 'Orbit''s schema is not there yet: run orbit migrate, then this file again';
        RETURN;
    END IF;

    -- Ownership, so that any member of orbit_migrator can alter what an earlier migration made
    -- (ALTER TABLE and CREATE INDEX need the owner; a grant of ALL is not enough).
    ALTER TABLE alembic_version OWNER TO orbit_migrator;
    ALTER TABLE runs OWNER TO orbit_migrator;  -- and its id sequence
    ALTER TABLE run_steps OWNER TO orbit_migrator;
    ALTER TABLE workers OWNER TO orbit_migrator;
    ALTER TABLE pauses OWNER TO orbit_migrator;
    ALTER TABLE schedules OWNER TO orbit_migrator;
    ALTER VIEW orbit_queue_summary OWNER TO orbit_migrator;
    IF to_regclass('public.api_tokens') IS NOT NULL THEN
        ALTER TABLE api_tokens OWNER TO orbit_migrator;
        ALTER TABLE console_sessions OWNER TO orbit_migrator;
        REVOKE ALL ON api_tokens, console_sessions
            FROM PUBLIC, orbit_enqueuer, orbit_worker, orbit_operator, orbit_server;
        -- orbit serve and orbit token: tokens by the hash of their secret, console sessions.
        GRANT SELECT, INSERT (name, role, secret_hash, created_by), UPDATE (last_used_at), DELETE
            ON api_tokens TO orbit_server;
        GRANT SELECT, INSERT (id_hash, token_name, csrf, expires_at), DELETE
            ON console_sessions TO orbit_server;
    END IF;
    ALTER VIEW orbit_interrupted_runs OWNER TO orbit_migrator;
    ALTER FUNCTION orbit_notify_runs() OWNER TO orbit_migrator;
    ALTER FUNCTION orbit_refuse_run_id() OWNER TO orbit_migrator;

    REVOKE ALL ON alembic_version, runs, run_steps, workers, pauses, schedules,
                  orbit_queue_summary, orbit_interrupted_runs
        FROM PUBLIC, orbit_enqueuer, orbit_worker, orbit_operator;
    REVOKE ALL ON SEQUENCE runs_id_seq FROM PUBLIC, orbit_enqueuer, orbit_worker, orbit_operator;

    -- Workers (app/worker/ and the services it drives; SQL in app/queries/).
    GRANT SELECT ON alembic_version, runs, run_steps, workers, pauses, schedules TO orbit_worker;
    GRANT INSERT (pipeline, params, priority, run_at, max_attempts, timeout, key)  -- schedules
        ON runs TO orbit_worker;
    GRANT UPDATE (status, attempt, worker_id, started_at, heartbeat_at, finished_at, run_at,
                  max_attempts, timeout, code_version, result, error, errors)
        ON runs TO orbit_worker;
    GRANT DELETE ON runs TO orbit_worker;  -- retention; their steps go with them
    GRANT INSERT (run_id, name, position, status, output, error, attempt, started_at, finished_at),
          UPDATE (position, status, output, error, attempt, started_at, finished_at)
        ON run_steps TO orbit_worker;
    GRANT INSERT (id, hostname, pid, concurrency, pipeline_filter, pipelines, version),
          UPDATE (hostname, pid, started_at, heartbeat_at, stopped_at, concurrency,
                  pipeline_filter, pipelines, version)
        ON workers TO orbit_worker;
    GRANT DELETE ON workers TO orbit_worker;  -- workers gone for WORKER_RETENTION
    GRANT INSERT (pipeline, last_slot, next_slot), UPDATE (last_slot, next_slot)
        ON schedules TO orbit_worker;
    -- The id trigger reads currval (no nextval: SELECT does not allow it).
    GRANT SELECT ON SEQUENCE runs_id_seq TO orbit_worker;

    -- Enqueuers: a run's id is either left out or taken with nextval first (enqueue_many).
    GRANT SELECT ON alembic_version, runs, run_steps TO orbit_enqueuer;
    GRANT INSERT (id, pipeline, params, priority, run_at, max_attempts, timeout, key)
        ON runs TO orbit_enqueuer;
    GRANT USAGE ON SEQUENCE runs_id_seq TO orbit_enqueuer;

    -- Operators (the orbit commands other than worker, enqueue and migrate).
    GRANT SELECT ON alembic_version, runs, run_steps, workers, pauses, schedules,
                    orbit_queue_summary, orbit_interrupted_runs
        TO orbit_operator;
    GRANT UPDATE (status, run_at, finished_at, max_attempts, error, errors)  -- cancel, resume, recover
        ON runs TO orbit_operator;
    GRANT DELETE ON runs TO orbit_operator;  -- prune
    GRANT INSERT (pattern, like_pattern, paused_by), DELETE ON pauses TO orbit_operator;

    -- Flow control (migration 0008): groups, the limits' overrides, the starts of rate-limited runs.
    IF to_regclass('public.limits') IS NOT NULL THEN
        ALTER TABLE limits OWNER TO orbit_migrator;
        ALTER TABLE run_starts OWNER TO orbit_migrator;
        REVOKE ALL ON limits, run_starts FROM PUBLIC, orbit_enqueuer, orbit_worker, orbit_operator;
        GRANT INSERT (run_group) ON runs TO orbit_worker, orbit_enqueuer;  -- schedules; enqueue(group=)
        GRANT INSERT (limits), UPDATE (limits) ON workers TO orbit_worker;  -- its code's limits
        GRANT SELECT ON limits, run_starts TO orbit_worker, orbit_operator;  -- the claim, health
        GRANT INSERT ON run_starts TO orbit_worker;  -- the claim of a rate-limited run
        GRANT DELETE ON run_starts TO orbit_worker;  -- the rescuer forgets starts older than a day
        GRANT SELECT, INSERT, UPDATE, DELETE ON limits TO orbit_operator;  -- orbit limit
    END IF;

    -- Executors (migration 0009): what a worker's processes use, written with its heartbeat.
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'public.workers'::regclass
               AND attname = 'memory' AND NOT attisdropped) THEN
        GRANT UPDATE (memory) ON workers TO orbit_worker;
    END IF;
END $$;
