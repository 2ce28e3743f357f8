-- nearcache: change notifications for near caches, installable on any database.
--
-- This file is generic and idempotent: it creates or replaces nearcache's functions and
-- attaches no table. Install it on your own database with
--
--     psql -1 -f sql/0003_nearcache_install.sql          (or nearcache_pg::install(&pool))
--
-- then attach each table you cache, naming its key column and the columns whose changes must
-- not notify (only columns your cache never serves, such as a login timestamp):
--
--     SELECT nearcache_attach('invoices', 'id', '{printed_at}');
--
-- (add notify => false when every instance uses the WAL source: the table is then only
-- published, and the writer pays nothing). With notify, each statement then sends, at commit, compact JSON payloads, never rows:
--
--     {"v":1,"table":"users","op":"update","keys":["7f0c…","1b2d…"]}
--     {"v":1,"table":"users","op":"flush"}          -- TRUNCATE, or too many keys
--
-- The rules:
-- * The key column must be NOT NULL (a primary key is). Keys travel as the column's ::text.
-- * An UPDATE notifies only for rows where a column outside the ignored list changed; a no-op
--   update sends nothing. A changed key notifies both the old and the new key.
-- * Keys are batched per statement; each payload, measured as sent (after JSON escaping), stays
--   under 7800 bytes, below Postgres' 8000-byte limit past which NOTIFY would abort the
--   writer's transaction. A key too long for any payload, or more than 40000 bytes of keys in
--   one statement (about 1000 UUIDs), sends one table-wide flush instead.
-- * The triggers are enabled ALWAYS, so they fire under session_replication_role = replica too
--   (pg_restore --disable-triggers, logical replication apply workers, bulk loaders).
-- * The channel is fixed per database: nearcache_channel(), 'nearcache' unless the database's
--   nearcache.channel setting said otherwise when this file was first installed. Change it with
--   SELECT nearcache_set_channel('app_cache'). No session setting can redirect notifications.
-- * Columns added later are watched too: an event trigger re-attaches an attached table after
--   every ALTER TABLE on it (creating it needs a superuser; without one, run nearcache_attach
--   again after adding a column — listeners refuse to serve from the cache until you do).
-- * nearcache_check(tables, channel) lists what is wrong with an installation; listeners call
--   it on every connection and stay in bypass until it reports nothing.
-- * Attached tables are also published in the publication nearcache, which the WAL source
--   (logical decoding) reads; a table without a primary key gets REPLICA IDENTITY FULL so that
--   its updates can name their rows.
-- * Payloads name the table without its schema. A rolled-back transaction sends nothing.
-- * Two-phase commit: Postgres refuses PREPARE TRANSACTION in a transaction that has run
--   NOTIFY, so a prepared transaction that writes an attached table fails at PREPARE. Use the
--   WAL as the invalidation source where writers use 2PC.
--
-- How: a row-level BEFORE trigger collects the JSON-escaped keys of changed rows in a
-- transaction-local setting, and a statement-level AFTER trigger sends them. The collecting
-- function is generated per table (nearcache_collect_<table oid>) so that it reads the key
-- column directly. The row trigger's WHEN clause compares the watched columns in C, so an
-- update that changes only ignored columns (or nothing) never calls a function; the statement
-- trigger's WHEN clause skips statements that collected nothing.

-- What is attached, with the columns watched at attach time.
CREATE TABLE IF NOT EXISTS nearcache_attached (
    tbl             regclass PRIMARY KEY,
    key_column      text NOT NULL,
    ignore_columns  text[] NOT NULL DEFAULT '{}',
    watched_columns text[] NOT NULL,
    -- false: published for the WAL source only, with no trigger in the writer's path.
    notify          boolean NOT NULL DEFAULT true
);

-- The publication the WAL source decodes (logical replication); nearcache_attach adds each
-- attached table to it. Creating it needs no particular wal_level; decoding it needs
-- wal_level = logical.
DO $install$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'nearcache') THEN
        CREATE PUBLICATION nearcache;
    END IF;
END
$install$;

-- The channel, fixed per database. Created once; re-installing keeps a channel already set.
DO $install$
BEGIN
    IF to_regprocedure('nearcache_channel()') IS NULL THEN
        EXECUTE format(
            'CREATE FUNCTION nearcache_channel() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
            format('SELECT %L::text',
                   coalesce(nullif(current_setting('nearcache.channel', true), ''), 'nearcache')));
    END IF;
END
$install$;

CREATE OR REPLACE FUNCTION nearcache_set_channel(channel text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF channel IS NULL OR channel !~ '^[a-z][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'nearcache_set_channel: invalid channel %: use 1 to 40 characters of a-z, 0-9 and _, starting with a letter', channel;
    END IF;
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION nearcache_channel() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
        format('SELECT %L::text', channel));
END
$$;

-- Sends what the statement collected, batched, or a flush. Its search_path is the installer's,
-- so that no session can substitute the functions it calls.
CREATE OR REPLACE FUNCTION nearcache_send() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    -- NOTIFY refuses payloads of 8000 bytes or more; what we send is measured exactly.
    max_payload constant int := 7800;
    setting     text := 'nearcache.pending_' || TG_RELID::oid::text;
    channel     text := nearcache_channel();
    pending     text := coalesce(current_setting(setting, true), '');
    flush       text := json_build_object('v', 1, 'table', TG_TABLE_NAME, 'op', 'flush')::text;
    head        text;
    body        text := '';
    keys        text[];
    k           text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify(channel, flush);
        RETURN NULL;
    END IF;
    PERFORM set_config(setting, '', true);
    IF pending = '' THEN
        RETURN NULL;
    ELSIF pending = '*' THEN
        PERFORM pg_notify(channel, flush);
        RETURN NULL;
    END IF;
    BEGIN
        -- Deduplicated and escaped again, exactly as they will be sent.
        keys := ARRAY(SELECT DISTINCT to_json(e)::text
                        FROM jsonb_array_elements_text(('[' || pending || ']')::jsonb) AS e);
    EXCEPTION WHEN others THEN
        -- Only a session that wrote into nearcache's own setting gets here: a flush covers it,
        -- and the write goes through.
        PERFORM pg_notify(channel, flush);
        RETURN NULL;
    END;
    head := '{"v":1,"table":' || to_json(TG_TABLE_NAME::text)::text
            || ',"op":"' || lower(TG_OP) || '","keys":[';
    FOREACH k IN ARRAY keys LOOP
        IF octet_length(head) + octet_length(k) + 2 > max_payload THEN
            -- A key too long for any payload: only a flush covers it.
            PERFORM pg_notify(channel, flush);
            RETURN NULL;
        END IF;
        IF body <> '' AND octet_length(head) + octet_length(body) + octet_length(k) + 3 > max_payload THEN
            PERFORM pg_notify(channel, head || body || ']}');
            body := '';
        END IF;
        body := CASE WHEN body = '' THEN k ELSE body || ',' || k END;
    END LOOP;
    PERFORM pg_notify(channel, head || body || ']}');
    RETURN NULL;
END
$$;

-- Attaches a table (replacing an earlier attach) and records it: publishes it for the WAL
-- source and, unless notify is false, adds the notification triggers the LISTEN source needs.
-- With notify => false the writer pays nothing at all (WAL-only deployments).
-- The first version (sql/0002) had no notify argument; one signature only, or calls without
-- it would be ambiguous.
DROP FUNCTION IF EXISTS nearcache_attach(regclass, text, text[]);
CREATE OR REPLACE FUNCTION nearcache_attach(tbl regclass, key_column text, ignore_columns text[] DEFAULT '{}',
                                            notify boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SET client_min_messages = warning
AS $$
DECLARE
    collect  text := 'nearcache_collect_' || tbl::oid::text;
    setting  text := 'nearcache.pending_' || tbl::oid::text;
    watched  text[];
    unknown  text;
    old_cols text;
    new_cols text;
    pending  text := format('coalesce(pg_catalog.current_setting(%L, true), %L) <> %L',
                            'nearcache.pending_' || tbl::oid::text, '', '');
    t        text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = tbl AND attname = key_column AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'nearcache_attach: % has no column %', tbl, key_column;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = tbl AND attname = key_column AND attnotnull) THEN
        RAISE EXCEPTION 'nearcache_attach: key column % of % may be NULL', key_column, tbl
            USING HINT = 'Make it NOT NULL (a primary key is): a row whose key is NULL cannot be named in a notification.';
    END IF;
    IF key_column = ANY (ignore_columns) THEN
        RAISE EXCEPTION 'nearcache_attach: the key column % of % cannot be ignored', key_column, tbl;
    END IF;
    SELECT string_agg(c, ', ') INTO unknown
      FROM unnest(ignore_columns) AS c
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = tbl AND attname = c AND attnum > 0 AND NOT attisdropped);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'nearcache_attach: % has no column % (in ignore_columns)', tbl, unknown;
    END IF;
    SELECT array_agg(attname::text ORDER BY attnum),
           string_agg('OLD.' || quote_ident(attname), ', ' ORDER BY attnum),
           string_agg('NEW.' || quote_ident(attname), ', ' ORDER BY attnum)
      INTO watched, old_cols, new_cols
      FROM pg_attribute
     WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped
       AND NOT (attname = ANY (ignore_columns));
    -- The ALTER TABLEs below must not wake nearcache_reattach.
    PERFORM set_config('nearcache.attaching', 'on', true);
    PERFORM nearcache_detach(tbl);
    -- Appends the row's key (both keys if an UPDATE changed it) to the statement's collection,
    -- as JSON strings; past 40000 bytes the collection becomes '*' (flush). Functions are
    -- qualified so that a session's search_path cannot replace them.
    EXECUTE format($f$
        CREATE FUNCTION %1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        DECLARE
            pending   text := coalesce(pg_catalog.current_setting(%2$L, true), '');
            old_key   text;
            new_key   text;
        BEGIN
            IF pending <> '*' THEN
                IF TG_OP <> 'INSERT' THEN
                    old_key := pg_catalog.to_json(OLD.%3$I::text)::text;
                    pending := pending || CASE WHEN pending = '' THEN '' ELSE ',' END || old_key;
                END IF;
                IF TG_OP <> 'DELETE' THEN
                    new_key := pg_catalog.to_json(NEW.%3$I::text)::text;
                    IF new_key IS DISTINCT FROM old_key THEN
                        pending := pending || CASE WHEN pending = '' THEN '' ELSE ',' END || new_key;
                    END IF;
                END IF;
                -- NULL if a key was NULL (a constraint dropped since attach): flush.
                IF pending IS NULL OR pg_catalog.octet_length(pending) > 40000 THEN
                    pending := '*';
                END IF;
                PERFORM pg_catalog.set_config(%2$L, pending, true);
            END IF;
            IF TG_OP = 'DELETE' THEN
                RETURN OLD;
            END IF;
            RETURN NEW;
        END
        $body$ $f$, collect, setting, key_column);
    IF notify THEN
    EXECUTE format('CREATE TRIGGER nearcache_collect_insert BEFORE INSERT ON %s
                    FOR EACH ROW EXECUTE FUNCTION %I()', tbl, collect);
    IF old_cols IS NOT NULL THEN
        EXECUTE format('CREATE TRIGGER nearcache_collect_update BEFORE UPDATE ON %s
                        FOR EACH ROW WHEN ((%s) IS DISTINCT FROM (%s))
                        EXECUTE FUNCTION %I()',
                       tbl, old_cols, new_cols, collect);
    END IF;
    EXECUTE format('CREATE TRIGGER nearcache_collect_delete BEFORE DELETE ON %s
                    FOR EACH ROW EXECUTE FUNCTION %I()', tbl, collect);
    EXECUTE format('CREATE TRIGGER nearcache_send_insert AFTER INSERT ON %s
                    FOR EACH STATEMENT WHEN (%s) EXECUTE FUNCTION nearcache_send()', tbl, pending);
    EXECUTE format('CREATE TRIGGER nearcache_send_update AFTER UPDATE ON %s
                    FOR EACH STATEMENT WHEN (%s) EXECUTE FUNCTION nearcache_send()', tbl, pending);
    EXECUTE format('CREATE TRIGGER nearcache_send_delete AFTER DELETE ON %s
                    FOR EACH STATEMENT WHEN (%s) EXECUTE FUNCTION nearcache_send()', tbl, pending);
    EXECUTE format('CREATE TRIGGER nearcache_send_truncate AFTER TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION nearcache_send()', tbl);
    ELSE
        EXECUTE format('DROP FUNCTION %I()', collect);
    END IF;
    -- The WAL source decodes the publication. A published table must be able to name its
    -- rows in the WAL, or Postgres refuses its UPDATEs and DELETEs: a table without a primary
    -- key (or another replica identity index) gets REPLICA IDENTITY FULL.
    IF (SELECT relreplident FROM pg_class WHERE oid = tbl) = 'n'
       OR ((SELECT relreplident FROM pg_class WHERE oid = tbl) = 'd'
           AND NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = tbl AND indisprimary)) THEN
        RAISE NOTICE 'nearcache_attach: % has no primary key; setting REPLICA IDENTITY FULL', tbl;
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', tbl);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                    WHERE p.pubname = 'nearcache' AND r.prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION nearcache ADD TABLE %s', tbl);
    END IF;
    -- Fire whatever session_replication_role says.
    FOR t IN SELECT tgname FROM pg_trigger WHERE tgrelid = tbl AND tgname LIKE 'nearcache\_%' LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', tbl, t);
    END LOOP;
    INSERT INTO nearcache_attached AS a (tbl, key_column, ignore_columns, watched_columns, notify)
    VALUES (tbl, key_column, ignore_columns, coalesce(watched, '{}'), notify)
    ON CONFLICT ON CONSTRAINT nearcache_attached_pkey DO UPDATE
       SET key_column = excluded.key_column,
           ignore_columns = excluded.ignore_columns,
           watched_columns = excluded.watched_columns,
           notify = excluded.notify;
    PERFORM set_config('nearcache.attaching', '', true);
END
$$;

-- Removes what nearcache_attach added.
CREATE OR REPLACE FUNCTION nearcache_detach(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET client_min_messages = warning
AS $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['nearcache_collect_insert', 'nearcache_collect_update',
                             'nearcache_collect_delete', 'nearcache_send_insert',
                             'nearcache_send_update', 'nearcache_send_delete',
                             'nearcache_send_truncate'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', t, tbl);
    END LOOP;
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'nearcache_collect_' || tbl::oid::text);
    DELETE FROM nearcache_attached WHERE nearcache_attached.tbl = nearcache_detach.tbl;
    -- Not while re-attaching: the table stays published.
    IF coalesce(current_setting('nearcache.attaching', true), '') <> 'on'
       AND EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                    WHERE p.pubname = 'nearcache' AND r.prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION nearcache DROP TABLE %s', tbl);
    END IF;
END
$$;

-- After an ALTER TABLE of an attached table, attaches it again, so that a column added later
-- is watched too (and a key column that became nullable is refused, aborting the ALTER).
CREATE OR REPLACE FUNCTION nearcache_reattach() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF coalesce(current_setting('nearcache.attaching', true), '') = 'on' THEN
        RETURN;
    END IF;
    FOR r IN SELECT DISTINCT a.tbl, a.key_column, a.ignore_columns, a.notify
               FROM pg_event_trigger_ddl_commands() AS c
               JOIN nearcache_attached AS a ON a.tbl::oid = c.objid
              WHERE c.classid = 'pg_class'::regclass LOOP
        PERFORM nearcache_attach(r.tbl, r.key_column, r.ignore_columns, r.notify);
    END LOOP;
END
$$;

DO $install$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        DROP EVENT TRIGGER IF EXISTS nearcache_reattach;
        CREATE EVENT TRIGGER nearcache_reattach ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE')
            EXECUTE FUNCTION nearcache_reattach();
    ELSIF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'nearcache_reattach') THEN
        RAISE WARNING 'nearcache: not a superuser, so no event trigger re-attaches tables after ALTER TABLE; run nearcache_attach again after adding a column';
    END IF;
END
$install$;

-- What is wrong with the installation, for a listener caching `tables` on `channel`: an empty
-- array when nothing is. Listeners call it on every connection.
CREATE OR REPLACE FUNCTION nearcache_check(tables text[], channel text) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    problems text[] := '{}';
    t        text;
    rel      regclass;
    a        nearcache_attached;
    missing  text;
BEGIN
    IF nearcache_channel() IS DISTINCT FROM channel THEN
        problems := problems || format('the triggers notify on channel %s, not %s', nearcache_channel(), channel);
    END IF;
    FOREACH t IN ARRAY tables LOOP
        rel := to_regclass(t);
        IF rel IS NULL THEN
            problems := problems || format('table %s does not exist', t);
            CONTINUE;
        END IF;
        SELECT * INTO a FROM nearcache_attached WHERE tbl = rel;
        IF NOT FOUND THEN
            problems := problems || format('table %s is not attached: SELECT nearcache_attach(%L, <key column>, <ignored columns>)', t, t);
            CONTINUE;
        END IF;
        IF NOT a.notify THEN
            problems := problems || format('table %s is attached for the WAL source only (notify => false): attach it again with notify for LISTEN', t);
            CONTINUE;
        END IF;
        SELECT string_agg(n, ', ') INTO missing
          FROM unnest(ARRAY['nearcache_collect_insert', 'nearcache_collect_delete',
                            'nearcache_send_insert', 'nearcache_send_update',
                            'nearcache_send_delete', 'nearcache_send_truncate']
                      || CASE WHEN a.watched_columns = '{}' THEN '{}'::text[]
                              ELSE ARRAY['nearcache_collect_update'] END) AS n
         WHERE NOT EXISTS (SELECT 1 FROM pg_trigger
                            WHERE tgrelid = rel AND tgname = n AND tgenabled = 'A');
        IF missing IS NOT NULL THEN
            problems := problems || format('table %s: triggers missing or not enabled ALWAYS: %s', t, missing);
        END IF;
        SELECT string_agg(attname, ', ' ORDER BY attnum) INTO missing
          FROM pg_attribute
         WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
           AND NOT (attname = ANY (a.ignore_columns))
           AND NOT (attname = ANY (a.watched_columns));
        IF missing IS NOT NULL THEN
            problems := problems || format('table %s: columns added after nearcache_attach are not watched: %s (run nearcache_attach again)', t, missing);
        END IF;
    END LOOP;
    RETURN problems;
END
$$;
