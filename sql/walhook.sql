-- walhook's SQL admin surface: validation, watch/unwatch, subscribe/unsubscribe, redeliver,
-- change notifications and views. Installed (idempotently) by `walhook migrate` after the
-- diesel migrations; every statement is CREATE OR REPLACE or guarded.

-- Event patterns: `noun.verb`, `noun.*`, `*.verb`, `*`.
CREATE OR REPLACE FUNCTION walhook.event_pattern_valid(pattern text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT pattern = '*'
        OR pattern ~ '^([a-z][a-z0-9_]*|\*)\.(created|updated|deleted|truncated|\*)$'
$$;

-- A fresh signing secret: `whsec_` + base64 of 32 strong random bytes (two v4 UUIDs come
-- from pg_strong_random).
CREATE OR REPLACE FUNCTION walhook.new_secret() RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT 'whsec_' || encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64')
$$;

-- Whether an address is refused as a webhook target (same ranges as src/delivery/guard.rs).
CREATE OR REPLACE FUNCTION walhook.address_forbidden(a inet) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT a <<= ANY ('{0.0.0.0/8,10.0.0.0/8,100.64.0.0/10,127.0.0.0/8,169.254.0.0/16,172.16.0.0/12,192.0.0.0/24,192.168.0.0/16,198.18.0.0/15,224.0.0.0/3,::/128,::1/128,fc00::/7,fe80::/10,ff00::/8,::ffff:0.0.0.0/96}'::inet[])
$$;

-- Whether target_url may be subscribed: IP-literal hosts in refused ranges are rejected unless
-- allow_private_targets is set. Host names are checked when connecting (DNS can change).
CREATE OR REPLACE FUNCTION walhook.target_allowed(target_url text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    host text := substring(target_url from '^[a-zA-Z]+://(?:[^@/?#]*@)?(\[[^]]+\]|[^:/?#]+)');
    addr inet;
BEGIN
    IF coalesce((SELECT value FROM walhook.settings WHERE name = 'allow_private_targets'), 'false') = 'true' THEN
        RETURN true;
    END IF;
    host := trim(both '[]' from coalesce(host, ''));
    IF host !~ '^[0-9.]+$' AND host !~ ':' THEN
        RETURN true;
    END IF;
    BEGIN
        addr := host::inet;
    EXCEPTION WHEN others THEN
        RETURN true; -- not an address: the URL check or DNS decides
    END;
    RETURN NOT walhook.address_forbidden(addr);
END
$$;

-- Validates every write to walhook.subscriptions, by function or by plain SQL, with messages
-- that name the column.
CREATE OR REPLACE FUNCTION walhook.check_subscription() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pattern text;
    known boolean;
BEGIN
    IF NEW.events IS NULL OR cardinality(NEW.events) = 0 THEN
        RAISE EXCEPTION 'walhook.subscriptions.events must name at least one event pattern'
            USING ERRCODE = 'check_violation', COLUMN = 'events',
                  HINT = 'e.g. ''{orders.created}'', ''{orders.*}'', ''{*.deleted}'' or ''{*}''';
    END IF;
    FOREACH pattern IN ARRAY NEW.events LOOP
        IF pattern IS NULL OR NOT walhook.event_pattern_valid(pattern) THEN
            RAISE EXCEPTION 'walhook.subscriptions.events: % is not an event pattern', coalesce(quote_literal(pattern), 'NULL')
                USING ERRCODE = 'check_violation', COLUMN = 'events',
                      HINT = 'use noun.verb, noun.*, *.verb or *, with verb one of created, updated, deleted, truncated';
        END IF;
        SELECT EXISTS (
            SELECT 1 FROM walhook.watched_tables w, unnest(w.verbs) v
            WHERE pattern = '*'
               OR (split_part(pattern, '.', 1) IN ('*', w.noun) AND split_part(pattern, '.', 2) IN ('*', v))
        ) INTO known;
        IF NOT known THEN
            RAISE WARNING 'walhook.subscriptions.events: no watched table produces % yet', quote_literal(pattern)
                USING HINT = 'watch a table with walhook.watch(); the subscription matches once it does';
        END IF;
    END LOOP;
    IF NEW.target_url IS NULL OR NEW.target_url !~ '^https?://[^/?#[:space:]]+([/?#][^[:space:]]*)?$' THEN
        RAISE EXCEPTION 'walhook.subscriptions.target_url must be an http:// or https:// URL, got %', coalesce(quote_literal(NEW.target_url), 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'target_url';
    END IF;
    IF NOT walhook.target_allowed(NEW.target_url) THEN
        RAISE EXCEPTION 'walhook.subscriptions.target_url % points to a loopback, private, link-local or metadata address', quote_literal(NEW.target_url)
            USING ERRCODE = 'check_violation', COLUMN = 'target_url',
                  HINT = 'set delivery.allow_private_targets = true to allow such targets';
    END IF;
    IF NEW.filter IS NULL OR jsonb_typeof(NEW.filter) <> 'object' THEN
        RAISE EXCEPTION 'walhook.subscriptions.filter must be a JSON object (column → value or array of values), got %', coalesce(NEW.filter::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'filter';
    END IF;
    IF NEW.headers IS NULL OR jsonb_typeof(NEW.headers) <> 'object'
       OR EXISTS (SELECT 1 FROM jsonb_each(NEW.headers) h WHERE jsonb_typeof(h.value) <> 'string') THEN
        RAISE EXCEPTION 'walhook.subscriptions.headers must be a JSON object of string values, got %', coalesce(NEW.headers::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'headers';
    END IF;
    IF NEW.secret IS NULL THEN
        NEW.secret := walhook.new_secret();
    ELSIF NEW.secret !~ '^whsec_[A-Za-z0-9+/]{32,}={0,2}$' THEN
        RAISE EXCEPTION 'walhook.subscriptions.secret must be whsec_ followed by at least 24 base64-encoded bytes'
            USING ERRCODE = 'check_violation', COLUMN = 'secret';
    END IF;
    IF NEW.expires_at IS NOT NULL AND NEW.expires_at <= now()
       AND (TG_OP = 'INSERT' OR NEW.expires_at IS DISTINCT FROM OLD.expires_at) THEN
        RAISE EXCEPTION 'walhook.subscriptions.expires_at % is in the past', NEW.expires_at
            USING ERRCODE = 'check_violation', COLUMN = 'expires_at';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
        IF NEW.active AND NOT OLD.active THEN
            NEW.disabled_reason := NULL;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS check_subscription ON walhook.subscriptions;
CREATE TRIGGER check_subscription BEFORE INSERT OR UPDATE ON walhook.subscriptions
    FOR EACH ROW EXECUTE FUNCTION walhook.check_subscription();

-- Wake the daemon: its routing index reloads on this notification (and on reconnect).
CREATE OR REPLACE FUNCTION walhook.notify_config() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('walhook_config', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS notify_config ON walhook.subscriptions;
CREATE TRIGGER notify_config AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON walhook.subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION walhook.notify_config();
DROP TRIGGER IF EXISTS notify_config ON walhook.watched_tables;
CREATE TRIGGER notify_config AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON walhook.watched_tables
    FOR EACH STATEMENT EXECUTE FUNCTION walhook.notify_config();

-- Trigger capture (capture.mode = "trigger"): which mode the installation is in.
INSERT INTO walhook.settings VALUES ('capture_mode', 'replication') ON CONFLICT (name) DO NOTHING;

-- One outbox row per row change (or TRUNCATE), written in the writer's own transaction, with
-- the session settings replication mode decodes under, so to_jsonb prints the same values.
-- Trigger arguments name columns to leave out (generated columns, which pgoutput omits).
CREATE OR REPLACE FUNCTION walhook.capture_row() RETURNS trigger
LANGUAGE plpgsql
SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres'
SET extra_float_digits = 1 SET bytea_output = 'hex'
AS $$
DECLARE
    hidden text[] := coalesce(TG_ARGV, '{}');
    source_schema text := TG_TABLE_SCHEMA;
    source_table text := TG_TABLE_NAME;
    ancestor record;
BEGIN
    -- A partition's change is recorded as its topmost watched ancestor's (itself included),
    -- as replication publishes it via the partition root. NULL for tables outside a tree.
    IF pg_partition_root(TG_RELID)::oid <> TG_RELID THEN
        SELECT n.nspname, c.relname INTO ancestor
        FROM pg_partition_ancestors(TG_RELID) WITH ORDINALITY a(relid, depth)
        JOIN walhook.watched_tables w ON w.relid = a.relid::oid
        JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace
        ORDER BY a.depth DESC LIMIT 1;
        IF FOUND THEN
            source_schema := ancestor.nspname;
            source_table := ancestor.relname;
        END IF;
    END IF;
    INSERT INTO walhook.outbox (schema_name, table_name, op, old_row, new_row, committed_at)
    VALUES (source_schema, source_table, TG_OP,
            CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) - hidden END,
            CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) - hidden END,
            clock_timestamp());
    PERFORM pg_notify('walhook_outbox', '');
    RETURN NULL;
END
$$;

-- Whether a table carries its own walhook_capture row trigger (not a clone of a partitioned
-- ancestor's: tgparentid from PostgreSQL 13, tgisinternal before).
CREATE OR REPLACE FUNCTION walhook.has_own_capture(tbl regclass) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = 'walhook_capture'
                   AND NOT coalesce((to_jsonb(t) ->> 'tgparentid')::oid <> 0, t.tgisinternal))
$$;

-- (Re)installs the capture triggers of a watched table for the verbs it produces. On a
-- partitioned table the row trigger is cloned by PostgreSQL onto every partition, present
-- and future; a partition already covered by such a clone gets nothing of its own, and own
-- triggers of partitions below a newly captured parent give way to the clones.
CREATE OR REPLACE FUNCTION walhook.install_capture(tbl regclass, verbs text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ops text[];
    hidden text;
    part regclass;
BEGIN
    PERFORM walhook.remove_capture(tbl);
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = 'walhook_capture') THEN
        RETURN; -- a clone of a watched ancestor's trigger: captured as that ancestor
    END IF;
    FOR part IN SELECT t.relid FROM pg_partition_tree(tbl) t WHERE t.relid <> tbl LOOP
        IF walhook.has_own_capture(part) THEN
            EXECUTE format('DROP TRIGGER walhook_capture ON %s', part);
        END IF;
    END LOOP;
    ops := array_remove(ARRAY[
        CASE WHEN 'created' = ANY (verbs) THEN 'INSERT' END,
        CASE WHEN 'updated' = ANY (verbs) THEN 'UPDATE' END,
        CASE WHEN 'deleted' = ANY (verbs) THEN 'DELETE' END], NULL);
    SELECT string_agg(quote_literal(attname), ', ' ORDER BY attnum) INTO hidden
    FROM pg_attribute WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped AND attgenerated <> '';
    IF cardinality(ops) > 0 THEN
        EXECUTE format('CREATE TRIGGER walhook_capture AFTER %s ON %s FOR EACH ROW EXECUTE FUNCTION walhook.capture_row(%s)',
                       array_to_string(ops, ' OR '), tbl, coalesce(hidden, ''));
    END IF;
    IF 'truncated' = ANY (verbs) THEN
        EXECUTE format('CREATE TRIGGER walhook_capture_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION walhook.capture_row()', tbl);
    END IF;
END
$$;

-- Removes a table's own capture triggers (a clone of an ancestor's goes with the ancestor's).
CREATE OR REPLACE FUNCTION walhook.remove_capture(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF walhook.has_own_capture(tbl) THEN
        EXECUTE format('DROP TRIGGER walhook_capture ON %s', tbl);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = 'walhook_capture_truncate') THEN
        EXECUTE format('DROP TRIGGER walhook_capture_truncate ON %s', tbl);
    END IF;
END
$$;

-- Switches capture mode: installs (trigger) or removes (replication) the capture triggers of
-- every watched table, then records the WAL position of the switch as checkpoint
-- 'mode_switch'. CREATE/DROP TRIGGER wait for the tables' in-flight writers, so every
-- transaction committed before that position was captured the old way, every later one the
-- new way. Returns the position, or NULL when the mode was already `mode` (triggers are
-- then brought in step with the watched tables).
CREATE OR REPLACE FUNCTION walhook.set_capture_mode(mode text) RETURNS pg_lsn
LANGUAGE plpgsql AS $$
DECLARE
    current_mode text;
    w record;
    tbl regclass;
    switched pg_lsn;
BEGIN
    IF mode IS NULL OR mode NOT IN ('replication', 'trigger') THEN
        RAISE EXCEPTION 'walhook.set_capture_mode: mode must be ''replication'' or ''trigger'', got %', coalesce(quote_literal(mode), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT value INTO current_mode FROM walhook.settings WHERE name = 'capture_mode' FOR UPDATE;
    FOR w IN SELECT * FROM walhook.watched_tables LOOP
        tbl := coalesce((SELECT c.oid FROM pg_class c WHERE c.oid = w.relid),
                        to_regclass(format('%I.%I', w.schema_name, w.table_name)));
        CONTINUE WHEN tbl IS NULL;
        IF mode = 'trigger' THEN
            PERFORM walhook.install_capture(tbl, w.verbs);
        ELSE
            PERFORM walhook.remove_capture(tbl);
        END IF;
    END LOOP;
    IF current_mode = mode THEN
        RETURN NULL;
    END IF;
    UPDATE walhook.settings SET value = mode WHERE name = 'capture_mode';
    switched := pg_current_wal_lsn();
    INSERT INTO walhook.checkpoints AS c (name, lsn) VALUES ('mode_switch', switched)
    ON CONFLICT (name) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now();
    RETURN switched;
END
$$;

-- The default event noun of a table name: lower-case, every other character folded to `_`
-- (runs collapsed, `_` trimmed at both ends), `t_` before a leading digit, so that it
-- matches ^[a-z][a-z0-9_]*$ ('Order Items' → order_items, '2024 Sales' → t_2024_sales).
-- NULL when nothing is left (a name of symbols only).
CREATE OR REPLACE FUNCTION walhook.default_noun(name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN folded = '' THEN NULL WHEN folded ~ '^[0-9]' THEN 't_' || folded ELSE folded END
    FROM (SELECT trim(both '_' from regexp_replace(lower(name), '[^a-z0-9]+', '_', 'g')) AS folded) f
$$;

-- Watch a table: its changes become <noun>.created/updated/deleted (and truncated if asked).
-- A partitioned table is watched with all its partitions, present and future: their changes
-- are the parent's events. The watch follows the table's OID (relid) through renames.
CREATE OR REPLACE FUNCTION walhook.watch(
    tbl regclass,
    noun text DEFAULT NULL,
    verbs text[] DEFAULT NULL,
    full_identity boolean DEFAULT true
) RETURNS walhook.watched_tables
LANGUAGE plpgsql AS $$
DECLARE
    rel record;
    chosen_noun text;
    chosen_verbs text[] := coalesce(verbs, '{created,updated,deleted}');
    holder record;
    has_key boolean;
    pub text;
    part regclass;
    suggestion text;
    result walhook.watched_tables;
BEGIN
    SELECT c.relname, n.nspname, c.relkind, c.relreplident, format('%I.%I', n.nspname, c.relname) AS qualified INTO rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'walhook.watch: % is not an ordinary table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    IF rel.nspname = 'walhook' THEN
        RAISE EXCEPTION 'walhook.watch: walhook''s own tables cannot be watched' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    chosen_noun := coalesce(noun, walhook.default_noun(rel.relname));
    IF chosen_noun IS NULL OR chosen_noun !~ '^[a-z][a-z0-9_]*$' THEN
        RAISE EXCEPTION 'walhook.watch: noun % of table % must be lower-case letters, digits and _, starting with a letter; pass noun => ''...''',
                        coalesce(quote_literal(chosen_noun), '(none: the table name has no letter or digit)'), rel.qualified
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('e.g. walhook.watch(%L, noun => ''my_table'')', rel.qualified);
    END IF;
    IF cardinality(chosen_verbs) = 0 OR NOT chosen_verbs <@ '{created,updated,deleted,truncated}'::text[] THEN
        RAISE EXCEPTION 'walhook.watch: verbs % must be a non-empty subset of {created,updated,deleted,truncated}', chosen_verbs
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The watch row follows the table: refresh names changed by a RENAME or SET SCHEMA.
    UPDATE walhook.watched_tables w SET schema_name = rel.nspname, table_name = rel.relname
    WHERE w.relid = tbl AND (w.schema_name, w.table_name) <> (rel.nspname, rel.relname);
    SELECT format('%I.%I', w.schema_name, w.table_name) AS qualified INTO holder FROM walhook.watched_tables w
    WHERE w.noun = chosen_noun AND w.relid IS DISTINCT FROM tbl::oid
      AND (w.schema_name, w.table_name) <> (rel.nspname, rel.relname);
    IF FOUND THEN
        suggestion := coalesce(walhook.default_noun(rel.nspname || '_' || rel.relname), 'my_table');
        RAISE EXCEPTION 'walhook.watch: noun % of table % is already used by table %; pass another noun => %',
                        quote_literal(chosen_noun), rel.qualified, holder.qualified, quote_literal(suggestion)
            USING ERRCODE = 'unique_violation',
                  HINT = format('e.g. walhook.watch(%L, noun => %L)', rel.qualified, suggestion);
    END IF;
    SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = tbl AND (indisprimary OR indisreplident)) INTO has_key;
    IF full_identity THEN
        -- REPLICA IDENTITY does not cascade to partitions: set it on every one, all levels
        -- (the daemon does the same for partitions attached later).
        FOR part IN SELECT c.oid FROM pg_class c
                    WHERE c.oid IN (SELECT tbl UNION SELECT t.relid FROM pg_partition_tree(tbl) t)
                      AND c.relreplident <> 'f' AND c.relkind IN ('r', 'p') LOOP
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', part);
        END LOOP;
    ELSIF NOT has_key AND rel.relreplident <> 'f' THEN
        RAISE EXCEPTION 'walhook.watch: % has no primary key and no replica identity index, so once published its UPDATE and DELETE statements would fail', tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'add a primary key, or call walhook.watch(..., full_identity => true)';
    END IF;
    INSERT INTO walhook.watched_tables AS w (schema_name, table_name, noun, verbs, full_identity, relid)
    VALUES (rel.nspname, rel.relname, chosen_noun, chosen_verbs, full_identity, tbl)
    ON CONFLICT (schema_name, table_name) DO UPDATE
        SET noun = EXCLUDED.noun, verbs = EXCLUDED.verbs, full_identity = EXCLUDED.full_identity,
            relid = EXCLUDED.relid
    RETURNING * INTO result;
    IF (SELECT value FROM walhook.settings WHERE name = 'capture_mode') = 'trigger' THEN
        PERFORM walhook.install_capture(tbl, chosen_verbs);
    END IF;
    -- Keep walhook's publication in step when it exists (the daemon creates it at start);
    -- partitions are published as their root's changes.
    SELECT value INTO pub FROM walhook.settings WHERE name = 'publication';
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = pub AND NOT pubviaroot) THEN
        EXECUTE format('ALTER PUBLICATION %I SET (publish_via_partition_root = true)', pub);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = pub)
       AND NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                       WHERE p.pubname = pub AND pr.prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', pub, tbl);
    END IF;
    RETURN result;
END
$$;

CREATE OR REPLACE FUNCTION walhook.unwatch(tbl regclass) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    pub text;
    removed boolean;
    below record;
BEGIN
    DELETE FROM walhook.watched_tables w
    USING pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = tbl AND (w.relid = tbl OR (w.schema_name = n.nspname AND w.table_name = c.relname));
    removed := FOUND;
    PERFORM walhook.remove_capture(tbl);
    -- In trigger mode, watched partitions below lose the clones of tbl's trigger: their own
    -- come back (upper levels first, whose clones then cover the levels below).
    IF (SELECT value FROM walhook.settings WHERE name = 'capture_mode') = 'trigger' THEN
        FOR below IN SELECT t.relid, wt.verbs FROM pg_partition_tree(tbl) t
                     JOIN walhook.watched_tables wt ON wt.relid = t.relid::oid
                     WHERE t.relid <> tbl ORDER BY t.level LOOP
            PERFORM walhook.install_capture(below.relid, below.verbs);
        END LOOP;
    END IF;
    SELECT value INTO pub FROM walhook.settings WHERE name = 'publication';
    IF EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
               WHERE p.pubname = pub AND pr.prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE %s', pub, tbl);
    END IF;
    RETURN removed;
END
$$;

-- Keeps watches in step with DDL on the watched tables; the daemon calls it about once a
-- second and logs each row returned:
--   dropped   the table is gone: its watch is removed;
--   renamed   RENAME / SET SCHEMA: the watch's names follow the table (same noun);
--   identity  a partition attached (or created PARTITION OF) since got REPLICA IDENTITY FULL,
--             as walhook.watch() gives the partitions it finds (full_identity watches);
--   failed    one of the above could not be done (the detail says why; retried next time).
-- Locks are not waited for long (lock_timeout): a busy table is retried on the next call.
CREATE OR REPLACE FUNCTION walhook.reconcile_watches() RETURNS TABLE (action text, detail text)
LANGUAGE plpgsql SET lock_timeout = '200ms' AS $$
DECLARE
    part record;
BEGIN
    -- Rows from before relid was recorded: link them by name.
    UPDATE walhook.watched_tables w SET relid = c.oid
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE w.relid IS NULL AND n.nspname = w.schema_name AND c.relname = w.table_name;
    RETURN QUERY
        WITH gone AS (
            DELETE FROM walhook.watched_tables w
            WHERE w.relid IS NULL OR NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = w.relid)
            RETURNING w.schema_name, w.table_name, w.noun)
        SELECT 'dropped', format('%I.%I (noun %s)', g.schema_name, g.table_name, g.noun) FROM gone g;
    BEGIN
        RETURN QUERY
            WITH now_named AS (
                SELECT w.schema_name AS old_schema, w.table_name AS old_table, n.nspname, c.relname
                FROM walhook.watched_tables w JOIN pg_class c ON c.oid = w.relid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE (w.schema_name, w.table_name) <> (n.nspname, c.relname)),
            moved AS (
                UPDATE walhook.watched_tables w SET schema_name = m.nspname, table_name = m.relname
                FROM now_named m WHERE (w.schema_name, w.table_name) = (m.old_schema, m.old_table)
                RETURNING m.old_schema, m.old_table, w.schema_name AS new_schema, w.table_name AS new_table, w.noun)
            SELECT 'renamed', format('%I.%I → %I.%I (noun %s)', m.old_schema, m.old_table, m.new_schema, m.new_table, m.noun)
            FROM moved m;
    EXCEPTION WHEN others THEN
        action := 'failed';
        detail := 'renaming watches: ' || SQLERRM;
        RETURN NEXT;
    END;
    FOR part IN SELECT c.oid::regclass AS tbl, format('%I.%I', w.schema_name, w.table_name) AS watched
                FROM walhook.watched_tables w
                CROSS JOIN LATERAL pg_partition_tree(w.relid::regclass) t
                JOIN pg_class c ON c.oid = t.relid
                WHERE w.full_identity AND c.relreplident <> 'f' AND c.relkind IN ('r', 'p')
                  AND EXISTS (SELECT 1 FROM pg_class wc WHERE wc.oid = w.relid) LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', part.tbl);
            action := 'identity';
            detail := format('%s (partition of watched %s): REPLICA IDENTITY FULL', part.tbl, part.watched);
        EXCEPTION WHEN others THEN
            action := 'failed';
            detail := format('REPLICA IDENTITY FULL on %s (partition of watched %s): %s', part.tbl, part.watched, SQLERRM);
        END;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION walhook.subscribe(
    target_url text,
    events text[],
    owner text DEFAULT NULL,
    filter jsonb DEFAULT '{}',
    secret text DEFAULT NULL,
    headers jsonb DEFAULT '{}',
    context text DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL
) RETURNS walhook.subscriptions
LANGUAGE sql AS $$
    INSERT INTO walhook.subscriptions (target_url, events, owner, filter, secret, headers, context, expires_at)
    VALUES (subscribe.target_url, subscribe.events, subscribe.owner, coalesce(subscribe.filter, '{}'),
            subscribe.secret, coalesce(subscribe.headers, '{}'), subscribe.context, subscribe.expires_at)
    RETURNING *
$$;

-- Removes every subscription to target_url; returns how many.
CREATE OR REPLACE FUNCTION walhook.unsubscribe(target_url text) RETURNS integer
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM walhook.subscriptions s WHERE s.target_url = unsubscribe.target_url RETURNING 1)
    SELECT count(*)::integer FROM gone
$$;

-- Removes one subscription; returns whether it existed.
CREATE OR REPLACE FUNCTION walhook.unsubscribe(id uuid) RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM walhook.subscriptions s WHERE s.id = unsubscribe.id RETURNING 1)
    SELECT count(*) > 0 FROM gone
$$;

-- Sends dead letters again: all, one subscription's, or one event's; returns how many.
CREATE OR REPLACE FUNCTION walhook.redeliver(event_id text DEFAULT NULL, subscription_id uuid DEFAULT NULL)
RETURNS integer
LANGUAGE sql AS $$
    WITH again AS (
        UPDATE walhook.delivery_queue q
        SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL
        WHERE q.status = 'dead'
          AND (redeliver.event_id IS NULL OR q.event_id = redeliver.event_id)
          AND (redeliver.subscription_id IS NULL OR q.subscription_id = redeliver.subscription_id)
        RETURNING 1)
    SELECT count(*)::integer FROM again
$$;

CREATE OR REPLACE VIEW walhook.dead_letters AS
    SELECT q.id, q.subscription_id, s.target_url, q.event_id, q.event_type, q.body::jsonb AS body,
           q.attempts, q.last_error, q.created_at
    FROM walhook.delivery_queue q JOIN walhook.subscriptions s ON s.id = q.subscription_id
    WHERE q.status = 'dead';

CREATE OR REPLACE VIEW walhook.subscription_health AS
    SELECT s.id, s.owner, s.target_url, s.active, s.disabled_reason,
           st.last_success_at, st.last_error_at, st.last_error,
           coalesce(st.consecutive_failures, 0) AS consecutive_failures,
           (SELECT count(*) FROM walhook.delivery_queue q WHERE q.subscription_id = s.id AND q.status = 'pending') AS pending,
           (SELECT count(*) FROM walhook.delivery_queue q WHERE q.subscription_id = s.id AND q.status = 'dead') AS dead
    FROM walhook.subscriptions s LEFT JOIN walhook.subscription_stats st ON st.subscription_id = s.id;
