-- Separate PostgreSQL roles for Orbit: one that migrates, one that enqueues, one that works.
--
-- Run once per database as a superuser (or the database owner), after `orbit migrate`:
--     psql "$DIRECT_URL" -f deploy/roles.sql
-- then give each service a login role that inherits one of them, for example:
--     CREATE ROLE billing_api LOGIN PASSWORD '...' IN ROLE orbit_enqueuer;
--     CREATE ROLE etl_worker  LOGIN PASSWORD '...' IN ROLE orbit_worker;
-- Re-running it is safe. Workers and enqueuers cannot change the schema (no CREATE, no DDL):
-- only orbit_migrator can, and migrations should run as a role in orbit_migrator.

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
END $$;

-- Before PostgreSQL 15 every role could create objects in the public schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO orbit_migrator;
GRANT USAGE ON SCHEMA public TO orbit_enqueuer, orbit_worker;

-- The migrator owns the schema's objects from now on.
GRANT ALL ON ALL TABLES IN SCHEMA public TO orbit_migrator;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO orbit_migrator;

-- Enqueuers insert runs and read them (status, results); they cannot claim or finish runs.
GRANT SELECT, INSERT ON runs TO orbit_enqueuer;
GRANT SELECT ON run_steps, workers, alembic_version TO orbit_enqueuer;

-- Workers read and write queue rows; nothing else.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO orbit_worker;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO orbit_worker, orbit_enqueuer;

-- Tables that later migrations create (run by orbit_migrator) get the same grants.
ALTER DEFAULT PRIVILEGES FOR ROLE orbit_migrator IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO orbit_worker;
ALTER DEFAULT PRIVILEGES FOR ROLE orbit_migrator IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO orbit_worker, orbit_enqueuer;
