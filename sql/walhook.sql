-- walhook's SQL admin surface: validation, watch/unwatch, subscribe/unsubscribe, redeliver,
-- change notifications and views. Installed (idempotently) by `walhook migrate` after the
-- diesel migrations; every statement is CREATE OR REPLACE or guarded.
--
-- Every function pins `search_path = pg_catalog, pg_temp` and names walhook's own objects
-- `walhook.…`, so no function, operator or table another role plants in a schema of the
-- caller's search path (CVE-2018-1058) ever runs inside them. The views below are parsed
-- under the same path, set for this session first.

SET search_path = pg_catalog, pg_temp;

-- Event patterns: `noun.verb`, `noun.*`, `*.verb`, `*`.
CREATE OR REPLACE FUNCTION walhook.event_pattern_valid(pattern text) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pattern = '*'
        OR pattern ~ '^([a-z][a-z0-9_]*|\*)\.(created|updated|deleted|truncated|\*)$'
$$;

-- A fresh signing secret: `whsec_` + base64 of 32 strong random bytes (two v4 UUIDs come
-- from pg_strong_random).
CREATE OR REPLACE FUNCTION walhook.new_secret() RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'whsec_' || encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64')
$$;

-- The IPv4 address an IPv6 address carries: IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible
-- (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::); NULL otherwise.
CREATE OR REPLACE FUNCTION walhook.embedded_ipv4(a inet) RETURNS inet
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bytes bytea;
    at integer;
BEGIN
    IF family(a) <> 6 THEN
        RETURN NULL;
    END IF;
    IF a <<= '::ffff:0:0/96'::inet OR a <<= '::/96'::inet OR a <<= '64:ff9b::/96'::inet THEN
        at := 12;
    ELSIF a <<= '2002::/16'::inet THEN
        at := 2;
    ELSE
        RETURN NULL;
    END IF;
    -- inet_send: family, bits, is_cidr, length, then the 16 address bytes.
    bytes := substring(inet_send(host(a)::inet) from 5);
    RETURN format('%s.%s.%s.%s', get_byte(bytes, at), get_byte(bytes, at + 1),
                  get_byte(bytes, at + 2), get_byte(bytes, at + 3))::inet;
END
$$;

-- Whether an address is refused as a webhook target (same ranges as src/delivery/guard.rs);
-- an IPv6 address carrying an IPv4 one is judged as that IPv4 address.
CREATE OR REPLACE FUNCTION walhook.address_forbidden(a inet) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN walhook.embedded_ipv4(a) IS NOT NULL THEN walhook.address_forbidden(walhook.embedded_ipv4(a))
           ELSE a <<= ANY ('{0.0.0.0/8,10.0.0.0/8,100.64.0.0/10,127.0.0.0/8,169.254.0.0/16,172.16.0.0/12,192.0.0.0/24,192.168.0.0/16,198.18.0.0/15,224.0.0.0/3,::/128,::1/128,64:ff9b:1::/48,fc00::/7,fe80::/10,ff00::/8}'::inet[])
           END
$$;

-- The host of a URL as the WHATWG URL parser (and so the sender) reads it: after the last
-- `@` of the authority, before the port, percent-decoded, lower-cased, NFKC-normalised with
-- ideographic full stops as dots; IPv6 literals keep their brackets. NULL when unreadable.
CREATE OR REPLACE FUNCTION walhook.target_host(target_url text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    host text := substring(target_url from '^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*)');
    raw bytea := '';
    i integer := 1;
BEGIN
    IF host IS NULL OR position(chr(92) in target_url) > 0 THEN
        RETURN NULL;
    END IF;
    host := regexp_replace(host, '^.*@', '');
    IF host LIKE '[%' THEN
        RETURN lower(substring(host from '^(\[[^]]*\])'));
    END IF;
    host := split_part(host, ':', 1);
    IF position('%' in host) > 0 THEN
        WHILE i <= length(host) LOOP
            IF substr(host, i, 1) = '%' AND substr(host, i + 1, 2) ~ '^[0-9A-Fa-f]{2}$' THEN
                raw := raw || decode(substr(host, i + 1, 2), 'hex');
                i := i + 3;
            ELSE
                raw := raw || convert_to(substr(host, i, 1), 'UTF8');
                i := i + 1;
            END IF;
        END LOOP;
        host := convert_from(raw, 'UTF8');
    END IF;
    IF host ~ E'[^\\x01-\\x7f]' THEN
        host := translate(normalize(host, NFKC), U&'\3002\FF0E\FF61', '...');
    END IF;
    RETURN lower(host);
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

-- The IPv4 address a host names by the WHATWG rules: when its last label (a trailing dot
-- aside) is a number, the host is 1 to 4 parts, each decimal, 0x-hex or 0-octal, the last
-- filling the remaining bytes (`2130706433`, `0x7f.1`, `127.1`, `0177.0.0.1`, `127.0.0.1.`).
-- NULL for a domain name; raises invalid_parameter_value for a number that is no address
-- (the URL parser refuses those).
CREATE OR REPLACE FUNCTION walhook.host_ipv4(host text) RETURNS inet
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[] := string_to_array(host, '.');
    n integer;
    part text;
    digits text;
    radix integer;
    value numeric;
    total numeric := 0;
    k integer;
BEGIN
    n := cardinality(parts);
    IF n > 1 AND parts[n] = '' THEN
        parts := parts[1:n - 1];
        n := n - 1;
    END IF;
    IF n = 0 OR parts[n] !~ '^([0-9]+|0[xX][0-9a-fA-F]*)$' THEN
        RETURN NULL;
    END IF;
    IF n > 4 THEN
        RAISE EXCEPTION 'host % has more than four numeric parts', host USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR k IN 1 .. n LOOP
        part := parts[k];
        IF part ~ '^0[xX]' THEN
            radix := 16;
            digits := lower(substr(part, 3));
        ELSIF part ~ '^0.' THEN
            radix := 8;
            digits := substr(part, 2);
        ELSE
            radix := 10;
            digits := part;
        END IF;
        IF (radix = 16 AND digits !~ '^[0-9a-f]*$') OR (radix = 8 AND digits !~ '^[0-7]+$')
           OR (radix = 10 AND digits !~ '^[0-9]+$') THEN
            RAISE EXCEPTION 'host % is not an IPv4 address', host USING ERRCODE = 'invalid_parameter_value';
        END IF;
        value := 0;
        FOR i IN 1 .. length(digits) LOOP
            value := value * radix + (position(substr(digits, i, 1) in '0123456789abcdef') - 1);
            IF value >= 4294967296 THEN
                RAISE EXCEPTION 'host % is not an IPv4 address', host USING ERRCODE = 'invalid_parameter_value';
            END IF;
        END LOOP;
        IF k < n THEN
            IF value > 255 THEN
                RAISE EXCEPTION 'host % is not an IPv4 address', host USING ERRCODE = 'invalid_parameter_value';
            END IF;
            total := total + value * 256 ^ (4 - k);
        ELSE
            IF value >= 256 ^ (5 - n) THEN
                RAISE EXCEPTION 'host % is not an IPv4 address', host USING ERRCODE = 'invalid_parameter_value';
            END IF;
            total := total + value;
        END IF;
    END LOOP;
    RETURN format('%s.%s.%s.%s', div(total, 16777216) % 256, div(total, 65536) % 256,
                  div(total, 256) % 256, total % 256)::inet;
END
$$;

-- Whether target_url may be subscribed: IP-literal hosts (every spelling the URL parser reads
-- as an address) in refused ranges are rejected unless allow_private_targets is set, as are
-- URLs whose host cannot be read. Host names are checked when connecting (DNS can change).
CREATE OR REPLACE FUNCTION walhook.target_allowed(target_url text) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    host text;
    addr inet;
BEGIN
    IF coalesce((SELECT value FROM walhook.settings WHERE name = 'allow_private_targets'), 'false') = 'true' THEN
        RETURN true;
    END IF;
    host := walhook.target_host(target_url);
    IF host IS NULL OR host = '' THEN
        RETURN false;
    END IF;
    BEGIN
        IF host LIKE '[%' THEN
            addr := trim(both '[]' from host)::inet;
        ELSE
            addr := walhook.host_ipv4(host);
        END IF;
    EXCEPTION WHEN others THEN
        RETURN false; -- the URL parser refuses it too: nothing to deliver to
    END;
    RETURN addr IS NULL OR NOT walhook.address_forbidden(addr);
END
$$;

-- Why a subscriber header may not be set (hop-by-hop, framing, routing, or walhook's own
-- headers, or not an HTTP token), NULL when it may. The one list: check_subscription and the
-- REST API rely on it.
CREATE OR REPLACE FUNCTION walhook.header_forbidden(name text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN name IS NULL OR name !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' THEN 'not a valid HTTP header name'
        WHEN lower(name) IN ('content-length', 'transfer-encoding', 'content-type', 'content-encoding', 'trailer')
            THEN 'framing header'
        WHEN lower(name) IN ('connection', 'keep-alive', 'upgrade', 'te', 'expect', 'http2-settings')
             OR lower(name) LIKE 'proxy-%' THEN 'hop-by-hop header'
        WHEN lower(name) = 'host' THEN 'routing header'
        WHEN lower(name) = 'user-agent' OR lower(name) LIKE 'webhook-%' THEN 'set by walhook'
    END
$$;

-- Whether a signing secret is usable by the sender: `whsec_` + canonical standard base64
-- (padded, no stray bits) of 24 to 64 bytes.
CREATE OR REPLACE FUNCTION walhook.secret_valid(secret text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key text := substring(secret from '^whsec_(.*)$');
    raw bytea;
BEGIN
    IF key IS NULL OR key !~ '^[A-Za-z0-9+/]*={0,2}$' OR length(key) % 4 <> 0 THEN
        RETURN false;
    END IF;
    raw := decode(key, 'base64');
    RETURN replace(encode(raw, 'base64'), E'\n', '') = key AND octet_length(raw) BETWEEN 24 AND 64;
EXCEPTION WHEN others THEN
    RETURN false;
END
$$;

-- What is wrong with a subscription filter (NULL when nothing): the one validation of the
-- filter language (docs/events.md), for SQL writes and the REST API alike (both go through
-- check_subscription). Names the column and the operator at fault. `nested` is set inside
-- "$previous", where "$" keys are not allowed.
CREATE OR REPLACE FUNCTION walhook.filter_problem(filter jsonb, nested boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    entry record;
    op record;
    problem text;
BEGIN
    FOR entry IN SELECT e.key, e.value FROM jsonb_each(filter) e ORDER BY e.key LOOP
        IF entry.key = '$changed' AND NOT nested THEN
            IF jsonb_typeof(entry.value) <> 'array' OR jsonb_array_length(entry.value) = 0
               OR EXISTS (SELECT 1 FROM jsonb_array_elements(entry.value) x WHERE jsonb_typeof(x) <> 'string') THEN
                RETURN format('"$changed" must be a non-empty array of column names, got %s', entry.value);
            END IF;
        ELSIF entry.key = '$previous' AND NOT nested THEN
            IF jsonb_typeof(entry.value) <> 'object' THEN
                RETURN format('"$previous" must be an object of column conditions, got %s', entry.value);
            END IF;
            problem := walhook.filter_problem(entry.value, true);
            IF problem IS NOT NULL THEN
                RETURN '"$previous": ' || problem;
            END IF;
        ELSIF left(entry.key, 1) = '$' THEN
            RETURN format('%s is not a filter key (%s)', to_jsonb(entry.key),
                          CASE WHEN nested THEN 'inside "$previous" only column conditions are allowed'
                               ELSE 'the keys starting with $ are "$changed" and "$previous"' END);
        ELSIF jsonb_typeof(entry.value) = 'object' THEN
            IF entry.value = '{}'::jsonb THEN
                RETURN format('%s: an operator object needs at least one of eq, ne, gt, gte, lt, lte, in, nin, null, prefix', to_jsonb(entry.key));
            END IF;
            FOR op IN SELECT o.key, o.value, jsonb_typeof(o.value) AS kind FROM jsonb_each(entry.value) o ORDER BY o.key LOOP
                IF op.key NOT IN ('eq', 'ne', 'gt', 'gte', 'lt', 'lte', 'in', 'nin', 'null', 'prefix') THEN
                    RETURN format('%s: unknown operator %s (use eq, ne, gt, gte, lt, lte, in, nin, null or prefix)', to_jsonb(entry.key), to_jsonb(op.key));
                ELSIF op.key IN ('gt', 'gte', 'lt', 'lte') AND op.kind NOT IN ('number', 'string') THEN
                    RETURN format('%s: operator %s needs a number or a string, got %s', to_jsonb(entry.key), to_jsonb(op.key), op.value);
                ELSIF op.key IN ('in', 'nin') AND op.kind <> 'array' THEN
                    RETURN format('%s: operator %s needs an array, got %s', to_jsonb(entry.key), to_jsonb(op.key), op.value);
                ELSIF op.key = 'null' AND op.kind <> 'boolean' THEN
                    RETURN format('%s: operator "null" needs true or false, got %s', to_jsonb(entry.key), op.value);
                ELSIF op.key = 'prefix' AND op.kind <> 'string' THEN
                    RETURN format('%s: operator "prefix" needs a string, got %s', to_jsonb(entry.key), op.value);
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- Validates every write to walhook.subscriptions, by function or by plain SQL, with messages
-- that name the column.
CREATE OR REPLACE FUNCTION walhook.check_subscription() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pattern text;
    known boolean;
    header record;
    reason text;
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
    IF NEW.target_url IS NULL OR NEW.target_url !~ '^https?://[^/?#[:space:]]+([/?#][^[:space:]]*)?$'
       OR NEW.target_url ~ '[[:cntrl:]]' OR position(chr(92) in NEW.target_url) > 0 THEN
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
    reason := walhook.filter_problem(NEW.filter);
    IF reason IS NOT NULL THEN
        RAISE EXCEPTION 'walhook.subscriptions.filter: %', reason
            USING ERRCODE = 'check_violation', COLUMN = 'filter',
                  HINT = 'a column maps to a value, an array of values, or operators among eq, ne, gt, gte, lt, lte, in, nin, null, prefix; "$changed" lists columns, "$previous" holds conditions on the old row';
    END IF;
    IF NEW.headers IS NULL OR jsonb_typeof(NEW.headers) <> 'object'
       OR EXISTS (SELECT 1 FROM jsonb_each(NEW.headers) h WHERE jsonb_typeof(h.value) <> 'string') THEN
        RAISE EXCEPTION 'walhook.subscriptions.headers must be a JSON object of string values, got %', coalesce(NEW.headers::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'headers';
    END IF;
    FOR header IN SELECT h.key, h.value FROM jsonb_each_text(NEW.headers) h ORDER BY h.key LOOP
        reason := walhook.header_forbidden(header.key);
        IF reason IS NOT NULL THEN
            RAISE EXCEPTION 'walhook.subscriptions.headers: % may not be set (%)', to_jsonb(header.key), reason
                USING ERRCODE = 'check_violation', COLUMN = 'headers',
                      HINT = 'walhook sets content-type, user-agent and webhook-* itself; hop-by-hop, framing and host headers are the connection''s';
        END IF;
        IF header.value ~ E'[\\x01-\\x08\\x0a-\\x1f\\x7f]' THEN
            RAISE EXCEPTION 'walhook.subscriptions.headers: the value of % contains CR, LF or another control character', to_jsonb(header.key)
                USING ERRCODE = 'check_violation', COLUMN = 'headers';
        END IF;
    END LOOP;
    IF NEW.secret IS NULL THEN
        NEW.secret := walhook.new_secret();
    ELSIF NOT walhook.secret_valid(NEW.secret) THEN
        RAISE EXCEPTION 'walhook.subscriptions.secret must be whsec_ followed by at least 24 base64-encoded bytes'
            USING ERRCODE = 'check_violation', COLUMN = 'secret',
                  HINT = 'whsec_ + standard base64 (with = padding) of 24 to 64 random bytes, e.g. from walhook.new_secret()';
    END IF;
    IF NEW.expires_at IS NOT NULL AND NEW.expires_at <= now()
       AND (TG_OP = 'INSERT' OR NEW.expires_at IS DISTINCT FROM OLD.expires_at) THEN
        RAISE EXCEPTION 'walhook.subscriptions.expires_at % is in the past', NEW.expires_at
            USING ERRCODE = 'check_violation', COLUMN = 'expires_at';
    END IF;
    IF NEW.batch_max IS NOT NULL AND NEW.batch_max NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'walhook.subscriptions.batch_max must be NULL or 1 (one event per request) or from 2 to 1000 (events per request), got %', NEW.batch_max
            USING ERRCODE = 'check_violation', COLUMN = 'batch_max',
                  HINT = 'e.g. batch_max = 100 with batch_window_ms = 50';
    END IF;
    IF NEW.batch_window_ms IS NULL OR NEW.batch_window_ms NOT BETWEEN 0 AND 10000 THEN
        RAISE EXCEPTION 'walhook.subscriptions.batch_window_ms must be from 0 to 10000 (milliseconds a batch may wait to fill), got %', coalesce(NEW.batch_window_ms::text, 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'batch_window_ms';
    END IF;
    IF NEW.http2 IS NULL THEN
        RAISE EXCEPTION 'walhook.subscriptions.http2 must be true or false, got NULL'
            USING ERRCODE = 'check_violation', COLUMN = 'http2';
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
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
-- SECURITY DEFINER (owned by the role that ran `walhook migrate`): writers need no rights on
-- schema walhook or the outbox, and cannot write the outbox themselves. to_jsonb would call a
-- user-defined cast to json with walhook's rights, so a row with a column of a user-defined
-- type is refused while such a cast exists.
CREATE OR REPLACE FUNCTION walhook.capture_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres'
SET extra_float_digits = 1 SET bytea_output = 'hex'
AS $$
DECLARE
    hidden text[] := coalesce(TG_ARGV, '{}');
    source_schema text := TG_TABLE_SCHEMA;
    source_table text := TG_TABLE_NAME;
    source_relid oid := TG_RELID;
    ancestor record;
    shape record;
    op text := TG_OP;
    old_in boolean;
    new_in boolean;
    old_row jsonb;
    new_row jsonb;
    keep text[];
BEGIN
    IF EXISTS (SELECT 1 FROM pg_cast c WHERE c.castsource >= 16384::oid AND c.casttarget = 'json'::regtype)
       AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND a.atttypid >= 16384::oid) THEN
        RAISE EXCEPTION 'walhook.capture_row: %.% has a column of a user-defined type and the database has a user-defined cast to json, which capture would run with walhook''s rights', TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- A partition's change is recorded as its topmost watched ancestor's (itself included),
    -- as replication publishes it via the partition root. NULL for tables outside a tree.
    IF pg_partition_root(TG_RELID)::oid <> TG_RELID THEN
        SELECT n.nspname, c.relname, a.relid::oid AS relid INTO ancestor
        FROM pg_partition_ancestors(TG_RELID) WITH ORDINALITY a(relid, depth)
        JOIN walhook.watched_tables w ON w.relid = a.relid::oid
        JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace
        ORDER BY a.depth DESC LIMIT 1;
        IF FOUND THEN
            source_schema := ancestor.nspname;
            source_table := ancestor.relname;
            source_relid := ancestor.relid;
        END IF;
    END IF;
    -- A first argument '' (no column has that name) marks a watch with columns, exclusions
    -- or a row filter: they are read from the watch itself (never from trigger arguments,
    -- which anyone creating a trigger could choose), so a column added later stays out of an
    -- allow-list. The row filter is applied as publication row filters are: an UPDATE whose
    -- old row passes and new row does not is recorded as a DELETE, the reverse as an INSERT.
    IF TG_NARGS > 0 AND TG_ARGV[0] = '' AND TG_LEVEL = 'ROW' THEN
        hidden := coalesce(TG_ARGV[1:TG_NARGS - 1], '{}'); -- TG_ARGV counts from 0
        SELECT w.columns, w.exclude_columns, w.row_filter INTO shape
        FROM walhook.watched_tables w WHERE w.relid = source_relid;
        IF FOUND THEN
            hidden := hidden || shape.exclude_columns;
            keep := shape.columns;
            IF shape.row_filter IS NOT NULL THEN
                IF TG_OP IN ('INSERT', 'UPDATE') THEN
                    EXECUTE 'SELECT coalesce((SELECT ' || shape.row_filter || ' FROM (SELECT ($1).*) AS t), false)'
                        INTO new_in USING NEW;
                END IF;
                IF TG_OP IN ('UPDATE', 'DELETE') THEN
                    EXECUTE 'SELECT coalesce((SELECT ' || shape.row_filter || ' FROM (SELECT ($1).*) AS t), false)'
                        INTO old_in USING OLD;
                END IF;
                op := CASE
                    WHEN TG_OP = 'INSERT' AND new_in THEN 'INSERT'
                    WHEN TG_OP = 'DELETE' AND old_in THEN 'DELETE'
                    WHEN TG_OP = 'UPDATE' AND old_in AND new_in THEN 'UPDATE'
                    WHEN TG_OP = 'UPDATE' AND old_in THEN 'DELETE'
                    WHEN TG_OP = 'UPDATE' AND new_in THEN 'INSERT'
                END;
                IF op IS NULL THEN
                    RETURN NULL;
                END IF;
            END IF;
        END IF;
    END IF;
    IF op IN ('UPDATE', 'DELETE') THEN
        old_row := to_jsonb(OLD) - hidden;
    END IF;
    IF op IN ('INSERT', 'UPDATE') THEN
        new_row := to_jsonb(NEW) - hidden;
    END IF;
    IF keep IS NOT NULL THEN
        old_row := (SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}') FROM jsonb_each(old_row) e
                    WHERE e.key = ANY (keep));
        new_row := (SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}') FROM jsonb_each(new_row) e
                    WHERE e.key = ANY (keep));
        old_row := CASE WHEN op IN ('UPDATE', 'DELETE') THEN old_row END;
        new_row := CASE WHEN op IN ('INSERT', 'UPDATE') THEN new_row END;
    END IF;
    INSERT INTO walhook.outbox (schema_name, table_name, op, old_row, new_row, committed_at)
    VALUES (source_schema, source_table, op, old_row, new_row, clock_timestamp());
    PERFORM pg_notify('walhook_outbox', '');
    RETURN NULL;
END
$$;

-- Whether a table carries its own walhook_capture row trigger (not a clone of a partitioned
-- ancestor's: tgparentid from PostgreSQL 13, tgisinternal before).
CREATE OR REPLACE FUNCTION walhook.has_own_capture(tbl regclass) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = 'walhook_capture'
                   AND NOT coalesce((to_jsonb(t) ->> 'tgparentid')::oid <> 0, t.tgisinternal))
$$;

-- (Re)installs the capture triggers of a watched table for the verbs it produces. On a
-- partitioned table the row trigger is cloned by PostgreSQL onto every partition, present
-- and future; a partition already covered by such a clone gets nothing of its own, and own
-- triggers of partitions below a newly captured parent give way to the clones.
CREATE OR REPLACE FUNCTION walhook.install_capture(tbl regclass, verbs text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ops text[];
    hidden text;
    part regclass;
    shape walhook.watched_tables;
    shaped boolean;
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
    SELECT * INTO shape FROM walhook.watched_tables w WHERE w.relid = tbl::oid;
    shaped := FOUND AND (shape.columns IS NOT NULL OR cardinality(shape.exclude_columns) > 0
                         OR shape.row_filter IS NOT NULL);
    ops := array_remove(ARRAY[
        CASE WHEN 'created' = ANY (verbs) THEN 'INSERT' END,
        CASE WHEN 'updated' = ANY (verbs) THEN 'UPDATE' END,
        CASE WHEN 'deleted' = ANY (verbs) THEN 'DELETE' END], NULL);
    -- With a row filter an UPDATE can become an INSERT or a DELETE (see capture_row).
    IF shaped AND shape.row_filter IS NOT NULL AND cardinality(ops) > 0 THEN
        ops := ARRAY['INSERT', 'UPDATE', 'DELETE'];
    END IF;
    SELECT string_agg(quote_literal(attname), ', ' ORDER BY attnum) INTO hidden
    FROM pg_attribute WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped AND attgenerated <> '';
    IF shaped THEN
        hidden := concat_ws(', ', '''''', hidden);
    END IF;
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
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
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

-- Who calls a SECURITY DEFINER function: the session's role (SET ROLE) or its user. Raises
-- insufficient_privilege unless that role may read tbl, since watching streams its rows.
-- EXECUTE on watch/unwatch is granted to walhook_admin only (sql/roles.sql).
CREATE OR REPLACE FUNCTION walhook.check_watcher(tbl regclass, fn text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    caller name := coalesce(nullif(current_setting('role'), 'none'), session_user);
BEGIN
    IF NOT has_table_privilege(caller, tbl, 'SELECT') THEN
        RAISE EXCEPTION '%: role % may not read %, so it may not watch it', fn, quote_ident(caller), tbl
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'the table''s owner grants SELECT on it to the role first';
    END IF;
END
$$;

-- The default event noun of a table name: lower-case, every other character folded to `_`
-- (runs collapsed, `_` trimmed at both ends), `t_` before a leading digit, so that it
-- matches ^[a-z][a-z0-9_]*$ ('Order Items' → order_items, '2024 Sales' → t_2024_sales).
-- NULL when nothing is left (a name of symbols only).
CREATE OR REPLACE FUNCTION walhook.default_noun(name text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN folded = '' THEN NULL WHEN folded ~ '^[0-9]' THEN 't_' || folded ELSE folded END
    FROM (SELECT trim(both '_' from regexp_replace(lower(name), '[^a-z0-9]+', '_', 'g')) AS folded) f
$$;

-- Watch a table: its changes become <noun>.created/updated/deleted (and truncated if asked).
-- A partitioned table is watched with all its partitions, present and future: their changes
-- are the parent's events. The watch follows the table's OID (relid) through renames.
-- SECURITY DEFINER, so a walhook_admin that does not own the table can set its replica
-- identity, publish it and install capture triggers; check_watcher requires it can read it.
-- The columns that identify a row to logical replication: the replica identity index's (or
-- the primary key's), NULL for REPLICA IDENTITY FULL (every column), empty for NOTHING.
CREATE OR REPLACE FUNCTION walhook.identity_columns(tbl regclass) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE c.relreplident
        WHEN 'f' THEN NULL
        WHEN 'n' THEN '{}'::text[]
        ELSE coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum)
                       FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                       WHERE i.indrelid = tbl AND CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END),
                      '{}')
        END
    FROM pg_class c WHERE c.oid = tbl
$$;

-- Checks a row filter for walhook.watch() and returns PostgreSQL's own text of it: the
-- predicate is given to a throwaway publication (dropped at once), so it is refused with
-- PostgreSQL's message exactly where a publication's WHERE would refuse it (unknown columns,
-- mutable or user-defined functions, subqueries…). No `;` is accepted, so the text is one
-- expression inside one statement. Unless the table has REPLICA IDENTITY FULL, the columns
-- it uses must be in the replica identity: PostgreSQL would otherwise refuse the table's
-- UPDATE and DELETE once it is published with the filter.
CREATE OR REPLACE FUNCTION walhook.check_row_filter(tbl regclass, predicate text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET client_min_messages = error
AS $$
DECLARE
    probe text := 'walhook_probe_' || pg_backend_pid();
    probe_rel oid;
    canonical text;
    identity text[] := walhook.identity_columns(tbl);
    outside text;
BEGIN
    IF predicate IS NULL OR btrim(predicate) = '' THEN
        RAISE EXCEPTION 'walhook.watch: "where" must be an SQL predicate on the columns of %, e.g. ''tenant_id <> 0''', tbl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF current_setting('server_version_num')::integer < 150000 THEN
        RAISE EXCEPTION 'walhook.watch: "where" needs PostgreSQL 15 or later (publication row filters)'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF position(';' in predicate) > 0 THEN
        RAISE EXCEPTION 'walhook.watch: "where" must be one SQL predicate, without ";"'
            USING ERRCODE = 'syntax_error';
    END IF;
    EXECUTE format('CREATE PUBLICATION %I FOR TABLE %s WHERE (%s)', probe, tbl, predicate);
    SELECT pr.oid, pg_get_expr(pr.prqual, pr.prrelid) INTO probe_rel, canonical
    FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
    WHERE p.pubname = probe AND pr.prrelid = tbl;
    IF (SELECT count(*) FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = probe) <> 1 THEN
        RAISE EXCEPTION 'walhook.watch: "where" must be one SQL predicate on the columns of %', tbl
            USING ERRCODE = 'syntax_error';
    END IF;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO outside
    FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
    WHERE d.classid = 'pg_publication_rel'::regclass AND d.objid = probe_rel
      AND d.refobjid = tbl AND d.refobjsubid > 0
      AND identity IS NOT NULL AND NOT (a.attname::text = ANY (identity));
    EXECUTE format('DROP PUBLICATION %I', probe);
    IF outside IS NOT NULL THEN
        RAISE EXCEPTION 'walhook.watch: the row filter of % uses %, which is not part of its replica identity, so PostgreSQL would refuse the table''s UPDATE and DELETE', tbl, outside
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'watch it with full_identity => true (REPLICA IDENTITY FULL), or filter on key columns only';
    END IF;
    RETURN canonical;
END
$$;

-- Puts one watched table into walhook's publication as its watch says (no-op when the
-- publication does not exist yet, or already matches); returns what it set, NULL when it
-- changed nothing. The one place the publication's entry for a table is written (watch(),
-- reconcile_watches() and the daemon's start call it):
--   column list  only the visible columns, when the watch hides some AND the replica identity
--                is not FULL AND the list covers the identity (PostgreSQL refuses UPDATE and
--                DELETE otherwise); else none, and the daemon drops hidden columns itself;
--   row filter   the watch's row_filter.
-- PostgreSQL has no statement that changes one table's entry, so it is dropped and added
-- again in this transaction (decoding sees one or the other, never neither).
CREATE OR REPLACE FUNCTION walhook.publish_table(tbl regclass) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pub text;
    w walhook.watched_tables;
    identity text[];
    want_attrs text;
    visible text[];
    have record;
BEGIN
    SELECT value INTO pub FROM walhook.settings WHERE name = 'publication';
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = pub) THEN
        RETURN NULL;
    END IF;
    -- One writer at a time (the daemon's start, reconcile_watches() and watch() may run at
    -- once): a second caller waits, then sees the entry the first one wrote.
    PERFORM pg_advisory_xact_lock(hashtext('walhook.publish_table'));
    SELECT * INTO w FROM walhook.watched_tables x WHERE x.relid = tbl::oid;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF current_setting('server_version_num')::integer < 150000 THEN
        -- No column lists or row filters before PostgreSQL 15 (watch() refuses "where" there;
        -- hidden columns are dropped by the daemon): the table is published whole.
        IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                       WHERE p.pubname = pub AND pr.prrelid = tbl) THEN
            EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', pub, tbl);
            RETURN format('%s in publication %I', tbl, pub);
        END IF;
        RETURN NULL;
    END IF;
    identity := walhook.identity_columns(tbl);
    IF (w.columns IS NOT NULL OR cardinality(w.exclude_columns) > 0) AND identity IS NOT NULL THEN
        SELECT string_agg(a.attnum::text, ' ' ORDER BY a.attnum), array_agg(a.attname::text ORDER BY a.attnum)
        INTO want_attrs, visible
        FROM pg_attribute a
        WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
          AND (w.columns IS NULL OR a.attname::text = ANY (w.columns))
          AND NOT (a.attname::text = ANY (w.exclude_columns));
        IF visible IS NULL OR NOT identity <@ visible THEN
            want_attrs := NULL;
            visible := NULL;
        END IF;
    END IF;
    SELECT pr.prattrs::text AS attrs, pg_get_expr(pr.prqual, pr.prrelid) AS qual INTO have
    FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
    WHERE p.pubname = pub AND pr.prrelid = tbl;
    IF FOUND AND have.attrs IS NOT DISTINCT FROM want_attrs AND have.qual IS NOT DISTINCT FROM w.row_filter THEN
        RETURN NULL;
    END IF;
    IF FOUND THEN
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE %s', pub, tbl);
    END IF;
    EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s%s%s', pub, tbl,
                   CASE WHEN visible IS NOT NULL
                        THEN ' (' || (SELECT string_agg(quote_ident(v), ', ') FROM unnest(visible) v) || ')' ELSE '' END,
                   CASE WHEN w.row_filter IS NOT NULL THEN ' WHERE (' || w.row_filter || ')' ELSE '' END);
    RETURN format('%s in publication %I: columns %s, rows %s', tbl, pub,
                  coalesce(array_to_string(visible, ', '), 'all'), coalesce(w.row_filter, 'all'));
END
$$;

-- The 4-argument watch() of earlier versions: replaced by the one below (one function, so
-- calls with named or positional arguments stay unambiguous).
DROP FUNCTION IF EXISTS walhook.watch(regclass, text, text[], boolean);

CREATE OR REPLACE FUNCTION walhook.watch(
    tbl regclass,
    noun text DEFAULT NULL,
    verbs text[] DEFAULT NULL,
    full_identity boolean DEFAULT true,
    columns text[] DEFAULT NULL,
    exclude_columns text[] DEFAULT NULL,
    "where" text DEFAULT NULL
) RETURNS walhook.watched_tables
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel record;
    chosen_noun text;
    chosen_verbs text[] := coalesce(verbs, '{created,updated,deleted}');
    holder record;
    has_key boolean;
    pub text;
    part regclass;
    suggestion text;
    unknown text;
    chosen_filter text;
    result walhook.watched_tables;
BEGIN
    PERFORM walhook.check_watcher(tbl, 'walhook.watch');
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
    -- Columns and row filter: names checked against the table, the predicate by PostgreSQL.
    IF watch.columns IS NOT NULL AND cardinality(watch.exclude_columns) > 0 THEN
        RAISE EXCEPTION 'walhook.watch: pass columns or exclude_columns, not both'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF watch.columns IS NOT NULL AND cardinality(watch.columns) = 0 THEN
        RAISE EXCEPTION 'walhook.watch: columns must name at least one column of %', rel.qualified
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(coalesce(quote_ident(x), 'NULL'), ', ') INTO unknown
    FROM unnest(coalesce(watch.columns, '{}') || coalesce(watch.exclude_columns, '{}')) AS x
    WHERE x IS NULL OR NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum > 0
                                   AND NOT a.attisdropped AND a.attname::text = x);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'walhook.watch: table % has no column %', rel.qualified, unknown
            USING ERRCODE = 'undefined_column';
    END IF;
    IF watch."where" IS NOT NULL THEN
        chosen_filter := walhook.check_row_filter(tbl, watch."where");
    END IF;
    INSERT INTO walhook.watched_tables AS w (schema_name, table_name, noun, verbs, full_identity, relid,
                                             columns, exclude_columns, row_filter)
    VALUES (rel.nspname, rel.relname, chosen_noun, chosen_verbs, full_identity, tbl,
            watch.columns, coalesce(watch.exclude_columns, '{}'), chosen_filter)
    ON CONFLICT (schema_name, table_name) DO UPDATE
        SET noun = EXCLUDED.noun, verbs = EXCLUDED.verbs, full_identity = EXCLUDED.full_identity,
            relid = EXCLUDED.relid, columns = EXCLUDED.columns,
            exclude_columns = EXCLUDED.exclude_columns, row_filter = EXCLUDED.row_filter
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
    PERFORM walhook.publish_table(tbl);
    RETURN result;
END
$$;

CREATE OR REPLACE FUNCTION walhook.unwatch(tbl regclass) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pub text;
    removed boolean;
    below record;
BEGIN
    PERFORM walhook.check_watcher(tbl, 'walhook.unwatch');
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
--   published the publication's entry for a table was brought in step (publish_table);
--   failed    one of the above could not be done (the detail says why; retried next time).
-- Locks are not waited for long (lock_timeout): a busy table is retried on the next call.
CREATE OR REPLACE FUNCTION walhook.reconcile_watches() RETURNS TABLE (action text, detail text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET lock_timeout = '200ms'
AS $$
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
    -- The publication follows the watches' columns and row filters, and the tables' replica
    -- identities (a column list must cover it): see publish_table.
    FOR part IN SELECT w.relid::regclass AS tbl FROM walhook.watched_tables w
                WHERE EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = w.relid) LOOP
        BEGIN
            detail := walhook.publish_table(part.tbl);
            IF detail IS NOT NULL THEN
                action := 'published';
                RETURN NEXT;
            END IF;
        EXCEPTION WHEN others THEN
            action := 'failed';
            detail := format('publishing %s: %s', part.tbl, SQLERRM);
            RETURN NEXT;
        END;
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
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO walhook.subscriptions (target_url, events, owner, filter, secret, headers, context, expires_at)
    VALUES (subscribe.target_url, subscribe.events, subscribe.owner, coalesce(subscribe.filter, '{}'),
            subscribe.secret, coalesce(subscribe.headers, '{}'), subscribe.context, subscribe.expires_at)
    RETURNING *
$$;

-- Removes every subscription to target_url, or, when the text is a UUID (no target URL is),
-- the subscription with that id, so `unsubscribe('<uuid>')` does what it says; returns how
-- many.
CREATE OR REPLACE FUNCTION walhook.unsubscribe(target_url text) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    by_id uuid;
    gone integer;
BEGIN
    BEGIN
        by_id := target_url::uuid;
    EXCEPTION WHEN invalid_text_representation THEN
        by_id := NULL;
    END;
    IF by_id IS NOT NULL THEN
        DELETE FROM walhook.subscriptions s WHERE s.id = by_id;
    ELSE
        DELETE FROM walhook.subscriptions s WHERE s.target_url = unsubscribe.target_url;
    END IF;
    GET DIAGNOSTICS gone = ROW_COUNT;
    RETURN gone;
END
$$;

-- Removes one subscription; returns whether it existed.
CREATE OR REPLACE FUNCTION walhook.unsubscribe(id uuid) RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (DELETE FROM walhook.subscriptions s WHERE s.id = unsubscribe.id RETURNING 1)
    SELECT count(*) > 0 FROM gone
$$;

-- Sends dead letters again: all, one subscription's, or one event's; returns how many.
-- SECURITY DEFINER: walhook_admin may redeliver without rights on the queue table.
CREATE OR REPLACE FUNCTION walhook.redeliver(event_id text DEFAULT NULL, subscription_id uuid DEFAULT NULL)
RETURNS integer
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH again AS (
        UPDATE walhook.delivery_queue q
        SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL
        WHERE q.status = 'dead'
          AND (redeliver.event_id IS NULL OR q.event_id = redeliver.event_id)
          AND (redeliver.subscription_id IS NULL OR q.subscription_id = redeliver.subscription_id)
        RETURNING 1)
    SELECT count(*)::integer FROM again
$$;

-- The daemon's queue writer: one multi-row INSERT into walhook.delivery_queue, in order.
-- Returns NULL when written, else '<SQLSTATE>:<message>', so the daemon can tell a write that
-- will fail again (data exception, integrity, program limit…: the event is parked as a dead
-- letter) from one worth retrying (connection, serialization, resources).
DROP FUNCTION IF EXISTS walhook.enqueue_deliveries(uuid[], text[], text[], text[], text[], integer[], float8[], text[], text[]);
CREATE OR REPLACE FUNCTION walhook.enqueue_deliveries(
    s uuid[], e text[], t text[], k text[], b text[], a integer[], d float8[], l text[], st text[],
    bt text[]
) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO walhook.delivery_queue
        (subscription_id, event_id, event_type, row_key, body, attempts, next_attempt_at, last_error, status, batch_id)
    SELECT u.s, u.e, u.t, u.k, u.b, u.a, now() + make_interval(secs => u.d), u.l, u.st, u.bt
    FROM unnest(s, e, t, k, b, a, d, l, st, bt) WITH ORDINALITY AS u(s, e, t, k, b, a, d, l, st, bt, n)
    WHERE EXISTS (SELECT 1 FROM walhook.subscriptions x WHERE x.id OPERATOR(pg_catalog.=) u.s)
    ORDER BY u.n
    ON CONFLICT (subscription_id, event_id) DO NOTHING;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ':' || SQLERRM;
END
$$;

-- Dead letters by age, for the retention purge (delivery.dead_letter_retention).
CREATE INDEX IF NOT EXISTS delivery_queue_dead ON walhook.delivery_queue (next_attempt_at)
    WHERE status = 'dead';

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

-- Backfills (docs/backfill.md): every existing row of a watched table as a `<noun>.backfilled`
-- event, to one subscription or (NULL) to every subscription taking the table's events. The
-- table needs a primary key (the chunks are read in its order); the filter uses the
-- subscription filter language, matched on each row. The daemon starts it at once.
CREATE OR REPLACE FUNCTION walhook.backfill(tbl regclass, subscription_id uuid DEFAULT NULL, filter jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    watched walhook.watched_tables;
    sub walhook.subscriptions;
    problem text;
    estimate bigint;
    new_id uuid;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'walhook.backfill: tbl is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM walhook.check_watcher(tbl, 'walhook.backfill');
    SELECT w.* INTO watched FROM walhook.watched_tables w
    JOIN pg_class c ON c.relname OPERATOR(pg_catalog.=) w.table_name::name
    JOIN pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                       AND n.nspname OPERATOR(pg_catalog.=) w.schema_name::name
    WHERE c.oid OPERATOR(pg_catalog.=) tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'walhook.backfill: % is not watched', tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('watch it first: SELECT walhook.watch(%L)', tbl::text);
    END IF;
    IF cardinality(walhook.primary_key_columns(tbl)) = 0 THEN
        RAISE EXCEPTION 'walhook.backfill: % has no primary key; backfills read a table in primary-key order', tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'add a primary key to the table (tables without one are not backfilled)';
    END IF;
    IF filter IS NULL OR jsonb_typeof(filter) <> 'object' THEN
        RAISE EXCEPTION 'walhook.backfill: filter must be a JSON object, got %', coalesce(filter::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    problem := walhook.filter_problem(filter);
    IF problem IS NULL AND (filter ? '$changed' OR filter ? '$previous') THEN
        problem := 'backfilled rows have no previous image: "$changed" and "$previous" do not apply';
    END IF;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'walhook.backfill: filter: %', problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF subscription_id IS NOT NULL THEN
        SELECT s.* INTO sub FROM walhook.subscriptions s WHERE s.id OPERATOR(pg_catalog.=) backfill.subscription_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'walhook.backfill: no subscription %', subscription_id
                USING ERRCODE = 'no_data_found';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM unnest(sub.events) p, unnest(watched.verbs) v
                       WHERE p OPERATOR(pg_catalog.=) '*'
                          OR split_part(p, '.', 1) IN ('*', watched.noun)
                             AND split_part(p, '.', 2) IN ('*', v)) THEN
            RAISE EXCEPTION 'walhook.backfill: subscription % takes no event of % (%.*)', subscription_id, tbl, watched.noun
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint INTO estimate
    FROM pg_partition_tree(tbl) p JOIN pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid
    WHERE p.isleaf AND c.reltuples OPERATOR(pg_catalog.>=) 0;
    IF estimate OPERATOR(pg_catalog.=) 0 THEN
        -- Never analyzed: count (once, at start; the total is an estimate either way).
        EXECUTE format('SELECT count(*) FROM %s', tbl) INTO estimate;
    END IF;
    INSERT INTO walhook.backfill_jobs (relid, schema_name, table_name, subscription_id, filter, estimated_total)
    VALUES (tbl, watched.schema_name, watched.table_name, backfill.subscription_id, filter, estimate)
    RETURNING id INTO new_id;
    PERFORM pg_notify('walhook_backfill', new_id::text);
    RETURN new_id;
END
$$;

-- Primary-key columns of a table, in key order (empty without a primary key).
CREATE OR REPLACE FUNCTION walhook.primary_key_columns(tbl regclass) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}')
    FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord), pg_attribute a
    WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indisprimary
      AND a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attnum OPERATOR(pg_catalog.=) k.attnum
$$;

-- Stops a running backfill (what was sent stays sent); true when one was running.
CREATE OR REPLACE FUNCTION walhook.cancel_backfill(id uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE walhook.backfill_jobs b SET state = 'cancelled', finished_at = now(), updated_at = now()
    WHERE b.id OPERATOR(pg_catalog.=) cancel_backfill.id AND b.state OPERATOR(pg_catalog.=) 'running';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('walhook_backfill', cancel_backfill.id::text);
    RETURN true;
END
$$;

-- Backfills and their progress.
CREATE OR REPLACE VIEW walhook.backfills AS
    SELECT b.id, format('%I.%I', b.schema_name, b.table_name) AS "table", b.schema_name, b.table_name,
           b.subscription_id, b.filter, b.state, b.last_key, b.rows_sent, b.estimated_total,
           CASE WHEN b.state = 'done' THEN 100.0
                WHEN b.estimated_total > 0 THEN round(least(100.0, 100.0 * b.rows_sent / b.estimated_total), 1)
                ELSE 0.0 END AS percent,
           b.error, b.created_at, b.updated_at, b.finished_at
    FROM walhook.backfill_jobs b;
