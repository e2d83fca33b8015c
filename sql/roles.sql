-- walhook's privilege model, installed (idempotently) by `walhook migrate` after walhook.sql.
--
-- Nothing in schema walhook is granted to PUBLIC: no other role reads a signing secret, writes
-- the outbox or calls a function. Two group roles (NOLOGIN; grant them to login roles):
--
--   walhook_admin    manages subscriptions (the functions and plain DML on
--                    walhook.subscriptions) and watches (walhook.watch/unwatch, SECURITY
--                    DEFINER, for tables the caller may read), redelivers dead letters.
--   walhook_monitor  reads health, dead letters, queue depth and status; never `secret` or
--                    `headers` of a subscription (column-level grants), never row data.
--
-- Roles are cluster-wide: a role that cannot create them (no CREATEROLE) gets a WARNING and
-- the grants to that role are skipped; the revocations from PUBLIC always apply.

SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON SCHEMA walhook FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA walhook FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA walhook FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA walhook FROM PUBLIC;

DO $roles$
DECLARE
    role_name text;
    f record;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['walhook_admin', 'walhook_monitor'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL; -- another database's migrate created it meanwhile
                WHEN insufficient_privilege THEN
                    RAISE WARNING 'walhook migrate: cannot create role %, its grants are skipped', role_name
                        USING HINT = 'run walhook migrate once as a role with CREATEROLE (or create the role yourself)';
            END;
        END IF;
    END LOOP;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_admin') THEN
        GRANT USAGE ON SCHEMA walhook TO walhook_admin;
        GRANT SELECT, INSERT, UPDATE, DELETE ON walhook.subscriptions TO walhook_admin;
        GRANT SELECT ON walhook.watched_tables, walhook.settings, walhook.subscription_stats,
            walhook.subscription_health, walhook.dead_letters TO walhook_admin;
        GRANT SELECT ON walhook.capture_progress, walhook.gaps TO walhook_admin;
        GRANT SELECT ON walhook.backfills TO walhook_admin;
        -- By name, whatever their signatures: the admin functions and the validators the
        -- check_subscription trigger calls with the writer's rights.
        FOR f IN SELECT p.oid::regprocedure AS sig FROM pg_proc p
                 WHERE p.pronamespace = 'walhook'::regnamespace
                   AND p.proname = ANY (ARRAY['watch', 'unwatch', 'subscribe', 'unsubscribe', 'redeliver',
                       'event_pattern_valid', 'new_secret', 'address_forbidden', 'embedded_ipv4',
                       'target_host', 'host_ipv4', 'target_allowed', 'header_forbidden', 'secret_valid',
                       'filter_problem', 'backfill', 'cancel_backfill', 'primary_key_columns']) LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO walhook_admin', f.sig);
        END LOOP;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walhook_monitor') THEN
        GRANT USAGE ON SCHEMA walhook TO walhook_monitor;
        GRANT SELECT ON walhook.subscription_health, walhook.dead_letters, walhook.watched_tables,
            walhook.subscription_stats, walhook.checkpoints, walhook.settings TO walhook_monitor;
        GRANT SELECT ON walhook.instances TO walhook_monitor;
        GRANT SELECT (id, owner, events, target_url, filter, context, active, expires_at,
                      disabled_reason, created_at, updated_at, batch_max, batch_window_ms, http2)
            ON walhook.subscriptions TO walhook_monitor;
        GRANT SELECT (id, subscription_id, event_id, event_type, status, attempts, next_attempt_at,
                      last_error, created_at, batch_id) ON walhook.delivery_queue TO walhook_monitor;
        GRANT SELECT (id, txid, schema_name, table_name, op, committed_at) ON walhook.outbox TO walhook_monitor;
        GRANT SELECT ON walhook.capture_progress, walhook.gaps TO walhook_monitor;
        GRANT SELECT ON walhook.backfills TO walhook_monitor;
    END IF;
END
$roles$;
