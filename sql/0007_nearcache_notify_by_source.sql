-- nearcache 0007: writers pay for triggers only where a source listens. Generic and idempotent
-- like 0003 and 0006, which it completes (nearcache_pg::install runs all three; by hand:
-- psql -1 -f 0003_nearcache_install.sql -f 0006_nearcache_stored_values.sql -f this).
--
-- Under the WAL source nothing reads the notifications, yet every write ran the row and
-- statement triggers and took NOTIFY's commit lock. Now each database chooses which source its
-- writes are for, and nearcache_attach fires triggers only when LISTEN needs them:
--
--   SELECT nearcache_set_source('auto');    -- the default: triggers unless wal_level = logical
--   SELECT nearcache_set_source('wal');     -- no trigger fires
--   SELECT nearcache_set_source('notify');  -- triggers (LISTEN)
--   SELECT nearcache_set_source('both');    -- triggers, and the WAL; for moving between them
--
-- Setting it attaches every attached table again accordingly. An explicit
-- nearcache_attach(..., notify => true|false) decides for its table, until the next
-- nearcache_set_source. A LISTEN source on a table without triggers reports it
-- (nearcache_check), with the fix.

-- The database's choice, one row. Created once; re-installing keeps a choice made. (A table,
-- not an IMMUTABLE function like nearcache_channel(): a session's cached plans would keep an
-- inlined constant after nearcache_set_source changed it.)
CREATE TABLE IF NOT EXISTS nearcache_settings (
    one    boolean PRIMARY KEY DEFAULT true CHECK (one),
    source text NOT NULL DEFAULT 'auto' CHECK (source IN ('auto', 'wal', 'notify', 'both'))
);
INSERT INTO nearcache_settings DEFAULT VALUES ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION nearcache_source() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT source FROM nearcache_settings), 'auto')
$$;

-- Whether a table attached now fires the triggers LISTEN needs.
CREATE OR REPLACE FUNCTION nearcache_notify_wanted() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT CASE nearcache_source()
               WHEN 'wal' THEN false
               WHEN 'notify' THEN true
               WHEN 'both' THEN true
               ELSE current_setting('wal_level') <> 'logical'
           END
$$;

-- Chooses the source the database's writes are for, and attaches every table again so.
CREATE OR REPLACE FUNCTION nearcache_set_source(source text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF source IS NULL OR source NOT IN ('auto', 'wal', 'notify', 'both') THEN
        RAISE EXCEPTION 'nearcache_set_source: % is not one of auto, wal, notify, both', source;
    END IF;
    INSERT INTO nearcache_settings AS s (source) VALUES (nearcache_set_source.source)
    ON CONFLICT (one) DO UPDATE SET source = excluded.source;
    FOR r IN SELECT * FROM nearcache_attached ORDER BY tbl::oid LOOP
        PERFORM nearcache_attach(r.tbl, r.key_column, r.ignore_columns);
    END LOOP;
END
$$;

-- Attaches a table (replacing an earlier attach) and records it; see 0003 and 0006. Without
-- `notify`, the database's choice decides (nearcache_notify_wanted()).
CREATE OR REPLACE FUNCTION nearcache_attach(tbl regclass, key_column text, ignore_columns text[] DEFAULT '{}',
                                            notify boolean DEFAULT NULL)
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
    ident    "char";
    carried  boolean;
    unique_ix regclass;
    t        text;
BEGIN
    notify := coalesce(notify, nearcache_notify_wanted());
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
    -- AFTER ROW: the row as stored, whatever a BEFORE trigger (of any name) did to it. The
    -- update trigger compares the watched columns' stored images (*<>), not the types'
    -- equality, under which 'Bob' = 'bob' (citext) and 1.50 = 1.500 (numeric); it also works
    -- for types without equality (json).
    EXECUTE format('CREATE TRIGGER nearcache_collect_insert AFTER INSERT ON %s
                    FOR EACH ROW EXECUTE FUNCTION %I()', tbl, collect);
    IF old_cols IS NOT NULL THEN
        EXECUTE format('CREATE TRIGGER nearcache_collect_update AFTER UPDATE ON %s
                        FOR EACH ROW WHEN (ROW(%s)::record *<> ROW(%s)::record)
                        EXECUTE FUNCTION %I()',
                       tbl, old_cols, new_cols, collect);
    END IF;
    EXECUTE format('CREATE TRIGGER nearcache_collect_delete AFTER DELETE ON %s
                    FOR EACH ROW EXECUTE FUNCTION %I()', tbl, collect);
    -- No WHEN on the statement triggers: Postgres evaluates it when the statement ends, before
    -- the AFTER ROW triggers above have collected anything. nearcache_send returns at once
    -- when nothing was collected.
    EXECUTE format('CREATE TRIGGER nearcache_send_insert AFTER INSERT ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION nearcache_send()', tbl);
    EXECUTE format('CREATE TRIGGER nearcache_send_update AFTER UPDATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION nearcache_send()', tbl);
    EXECUTE format('CREATE TRIGGER nearcache_send_delete AFTER DELETE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION nearcache_send()', tbl);
    EXECUTE format('CREATE TRIGGER nearcache_send_truncate AFTER TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION nearcache_send()', tbl);
    ELSE
        EXECUTE format('DROP FUNCTION %I()', collect);
    END IF;
    -- The WAL source decodes the publication. A published table must be able to name its
    -- rows in the WAL, or Postgres refuses its UPDATEs and DELETEs: a table without a primary
    -- key (or another replica identity index) gets REPLICA IDENTITY FULL.
    -- The WAL source names a row by the key column, so the identity must carry it (old
    -- tuples carry only the identity's columns): when it does not, the key's own unique index
    -- becomes the identity.
    SELECT relreplident INTO ident FROM pg_class WHERE oid = tbl;
    carried := ident = 'f' OR nearcache_identity_carries(tbl, key_column);
    IF NOT carried THEN
        SELECT i.indexrelid::regclass INTO unique_ix
          FROM pg_index i
         WHERE i.indrelid = tbl AND i.indisunique AND i.indimmediate AND i.indpred IS NULL
           AND i.indexprs IS NULL AND i.indnkeyatts = 1
           AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                               WHERE attrelid = tbl AND attname = key_column)
         ORDER BY i.indisprimary DESC
         LIMIT 1;
        IF unique_ix IS NOT NULL THEN
            RAISE NOTICE 'nearcache_attach: % is keyed by %; setting REPLICA IDENTITY USING INDEX % so that the WAL names its rows by it', tbl, key_column, unique_ix;
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY USING INDEX %s', tbl, unique_ix);
        ELSIF ident = 'n' OR (ident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = tbl AND indisprimary)) THEN
            RAISE NOTICE 'nearcache_attach: % has no primary key nor unique index on %; setting REPLICA IDENTITY FULL', tbl, key_column;
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', tbl);
        ELSE
            RAISE WARNING 'nearcache_attach: the WAL source cannot name rows of % by %, which its replica identity does not carry: create a unique index on it, or ALTER TABLE % REPLICA IDENTITY FULL', tbl, key_column, tbl;
        END IF;
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
            problems := problems || format('table %s fires no trigger (attached for the WAL source): for LISTEN, SELECT nearcache_set_source(''notify'') (or ''both'' while moving from one source to the other)', t);
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
        -- Triggers of the first kind (BEFORE ROW, comparing with the types' equality) miss
        -- changes: attach again.
        IF EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = rel AND tgname LIKE 'nearcache\_collect\_%'
                      AND (tgtype & 2) <> 0) THEN
            problems := problems || format('table %s: its triggers are of an older kind that misses some changes: SELECT nearcache_attach(%L, %L, %L)', t, t, a.key_column, a.ignore_columns);
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

-- Attach again what was attached, as the database's choice says: on a database with
-- wal_level = logical, the triggers go.
DO $install$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM nearcache_attached ORDER BY tbl::oid LOOP
        PERFORM nearcache_attach(r.tbl, r.key_column, r.ignore_columns);
    END LOOP;
END
$install$;
