-- Change notifications for near caches.
--
-- Attach them to any table with
--
--     SELECT nearcache_attach('my_table', 'id', '{updated_at,last_seen_at}');
--
-- naming the table, its key column (any type; keys travel as text) and the columns whose changes
-- must not notify. Each statement then sends, at commit, compact JSON payloads, never rows:
--
--     {"v":1,"table":"users","op":"update","keys":["7f0c…","1b2d…"]}
--     {"v":1,"table":"users","op":"flush"}          -- TRUNCATE, or too many keys
--
-- * An UPDATE notifies only for rows where a column outside the ignored list changed; a no-op
--   update sends nothing. A changed key notifies both the old and the new key.
-- * Keys are batched per statement: each payload stays under nearcache.max_payload bytes
--   (default 6000, well under Postgres' 8000-byte limit, past which NOTIFY would abort the
--   writer's transaction).
-- * Past nearcache.max_batch bytes of keys in one statement (default 40000, about 1000 UUIDs)
--   a single table-wide flush is sent instead.
-- * The channel is the setting nearcache.channel (default 'nearcache'), e.g.
--   ALTER DATABASE app SET nearcache.channel = 'app_cache'. Listeners must use the same name.
-- * Payloads name the table without its schema.
-- * Notifications are delivered at commit; a rolled-back transaction sends nothing.
--
-- How: a row-level BEFORE trigger collects the keys of changed rows in a transaction-local
-- setting, and a statement-level AFTER trigger sends them. The collecting function is generated
-- per table (nearcache_collect_<table oid>), so that it reads the key column directly rather
-- than converting whole rows. The row trigger's WHEN clause
-- compares the non-ignored columns in C, so an update that changes only ignored columns (a
-- login recording last_seen_at) or nothing at all never calls a function; the statement
-- trigger's WHEN clause skips statements that collected nothing. Adding a column to an attached
-- table? Run nearcache_attach again so that its changes notify too.

-- Sends what the statement collected, batched, or a flush.
CREATE FUNCTION nearcache_send() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    setting     text := 'nearcache.pending_' || TG_RELID::oid::text;
    channel     text := coalesce(nullif(current_setting('nearcache.channel', true), ''), 'nearcache');
    max_payload int := coalesce(nullif(current_setting('nearcache.max_payload', true), '')::int, 6000);
    pending     text := coalesce(current_setting(setting, true), '');
    op          text := lower(TG_OP);
    flush       text := json_build_object('v', 1, 'table', TG_TABLE_NAME, 'op', 'flush')::text;
    batch       text[] := '{}';
    batch_bytes int := 0;
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
    FOR k IN SELECT DISTINCT jsonb_array_elements_text(('[' || pending || ']')::jsonb) LOOP
        IF octet_length(k) > max_payload - 100 THEN
            -- A key too long for any payload: only a flush covers it.
            PERFORM pg_notify(channel, flush);
            RETURN NULL;
        END IF;
        IF batch_bytes + octet_length(k) + 4 > max_payload - 100 THEN
            PERFORM pg_notify(channel, json_build_object('v', 1, 'table', TG_TABLE_NAME, 'op', op, 'keys', batch)::text);
            batch := '{}';
            batch_bytes := 0;
        END IF;
        batch := array_append(batch, k);
        batch_bytes := batch_bytes + octet_length(k) + 4;
    END LOOP;
    PERFORM pg_notify(channel, json_build_object('v', 1, 'table', TG_TABLE_NAME, 'op', op, 'keys', batch)::text);
    RETURN NULL;
END
$$;

-- Attaches the notification triggers to a table (replacing earlier ones).
CREATE FUNCTION nearcache_attach(tbl regclass, key_column text, ignore_columns text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    collect  text := 'nearcache_collect_' || tbl::oid::text;
    old_cols text;
    new_cols text;
    pending text := format('coalesce(current_setting(%L, true), %L) <> %L',
                           'nearcache.pending_' || tbl::oid::text, '', '');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = tbl AND attname = key_column AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'nearcache_attach: % has no column %', tbl, key_column;
    END IF;
    SELECT string_agg('OLD.' || quote_ident(attname), ', ' ORDER BY attnum),
           string_agg('NEW.' || quote_ident(attname), ', ' ORDER BY attnum)
      INTO old_cols, new_cols
      FROM pg_attribute
     WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped
       AND NOT (attname = ANY (ignore_columns));
    IF old_cols IS NULL THEN
        RAISE EXCEPTION 'nearcache_attach: every column of % is ignored', tbl;
    END IF;
    PERFORM nearcache_detach(tbl);
    -- Appends the row's key (both keys if an UPDATE changed it) to the statement's collection,
    -- as JSON strings; past nearcache.max_batch bytes the collection becomes '*' (flush).
    EXECUTE format($f$
        CREATE FUNCTION %1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        DECLARE
            pending   text := coalesce(current_setting(%2$L, true), '');
            max_batch int := coalesce(nullif(current_setting('nearcache.max_batch', true), '')::int, 40000);
            old_key   text;
            new_key   text;
        BEGIN
            IF pending <> '*' THEN
                IF TG_OP <> 'INSERT' THEN
                    old_key := to_json(OLD.%3$I::text)::text;
                    pending := pending || CASE WHEN pending = '' THEN '' ELSE ',' END || old_key;
                END IF;
                IF TG_OP <> 'DELETE' THEN
                    new_key := to_json(NEW.%3$I::text)::text;
                    IF new_key IS DISTINCT FROM old_key THEN
                        pending := pending || CASE WHEN pending = '' THEN '' ELSE ',' END || new_key;
                    END IF;
                END IF;
                IF octet_length(pending) > max_batch THEN
                    pending := '*';
                END IF;
                PERFORM set_config(%2$L, pending, true);
            END IF;
            IF TG_OP = 'DELETE' THEN
                RETURN OLD;
            END IF;
            RETURN NEW;
        END
        $body$ $f$, collect, 'nearcache.pending_' || tbl::oid::text, key_column);
    EXECUTE format('CREATE TRIGGER nearcache_collect_insert BEFORE INSERT ON %s
                    FOR EACH ROW EXECUTE FUNCTION %I()', tbl, collect);
    EXECUTE format('CREATE TRIGGER nearcache_collect_update BEFORE UPDATE ON %s
                    FOR EACH ROW WHEN ((%s) IS DISTINCT FROM (%s))
                    EXECUTE FUNCTION %I()',
                   tbl, old_cols, new_cols, collect);
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
END
$$;

-- Removes what nearcache_attach added.
CREATE FUNCTION nearcache_detach(tbl regclass) RETURNS void
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
END
$$;

SELECT nearcache_attach('organizations', 'id', '{updated_at}');
SELECT nearcache_attach('users', 'id', '{updated_at,last_seen_at}');
