-- Change notifications for near caches.
--
-- nearcache_notify() is generic: attach it to any table with
--
--     SELECT nearcache_attach('my_table', 'id', '{updated_at,last_seen_at}');
--
-- naming the table, its key column (any type; keys travel as text) and the columns whose changes
-- must not notify. It adds four statement-level AFTER triggers (INSERT, UPDATE, DELETE,
-- TRUNCATE). Each statement sends compact JSON payloads, never rows:
--
--     {"v":1,"table":"users","op":"update","keys":["7f0c…","1b2d…"]}
--     {"v":1,"table":"users","op":"flush"}          -- TRUNCATE, or too many keys
--
-- * An UPDATE notifies only for rows where a column outside the ignored list changed; a no-op
--   update sends nothing. A changed key notifies both the old and the new key.
-- * Keys are batched: each payload stays under nearcache.max_payload bytes (default 6000, well
--   under Postgres' 8000-byte limit, past which NOTIFY would abort the writer's transaction).
-- * Past nearcache.max_keys keys in one statement (default 1000) a single table-wide flush is
--   sent instead.
-- * The channel is the setting nearcache.channel (default 'nearcache'), e.g.
--   ALTER DATABASE app SET nearcache.channel = 'app_cache'. Listeners must use the same name.
-- * Payloads name the table without its schema.
-- * Notifications are delivered at commit; a rolled-back transaction sends nothing.

CREATE FUNCTION nearcache_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    key_column  text := TG_ARGV[0];
    ignored     text[] := coalesce(TG_ARGV[1], '{}')::text[];
    channel     text := coalesce(nullif(current_setting('nearcache.channel', true), ''), 'nearcache');
    max_keys    int := coalesce(nullif(current_setting('nearcache.max_keys', true), '')::int, 1000);
    max_payload int := coalesce(nullif(current_setting('nearcache.max_payload', true), '')::int, 6000);
    op          text := lower(TG_OP);
    keys        text[];
    batch       text[] := '{}';
    batch_bytes int := 0;
    k           text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify(channel, json_build_object('v', 1, 'table', TG_TABLE_NAME, 'op', 'flush')::text);
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        EXECUTE format('SELECT array_agg(DISTINCT (%I)::text) FROM nearcache_new', key_column)
            INTO keys;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT array_agg(DISTINCT (%I)::text) FROM nearcache_old', key_column)
            INTO keys;
    ELSE
        -- Old and new rows paired by key; a row whose key changed shows up on both sides alone
        -- and so notifies both keys.
        EXECUTE format(
            'SELECT array_agg(DISTINCT coalesce(n.k, o.k))
               FROM (SELECT (%1$I)::text AS k, to_jsonb(t) - $1 AS j FROM nearcache_new t) n
               FULL JOIN (SELECT (%1$I)::text AS k, to_jsonb(t) - $1 AS j FROM nearcache_old t) o
                 ON n.k = o.k
              WHERE n.j IS DISTINCT FROM o.j', key_column)
            INTO keys USING ignored;
    END IF;

    IF keys IS NULL THEN
        RETURN NULL;
    END IF;
    IF cardinality(keys) > max_keys THEN
        PERFORM pg_notify(channel, json_build_object('v', 1, 'table', TG_TABLE_NAME, 'op', 'flush')::text);
        RETURN NULL;
    END IF;

    FOREACH k IN ARRAY keys LOOP
        IF octet_length(k) > max_payload - 100 THEN
            -- A key too long for any payload: only a flush covers it.
            PERFORM pg_notify(channel, json_build_object('v', 1, 'table', TG_TABLE_NAME, 'op', 'flush')::text);
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

-- Attaches nearcache_notify() to a table: one statement-level trigger per event, since a
-- trigger with transition tables may name only one event.
CREATE FUNCTION nearcache_attach(tbl regclass, key_column text, ignore_columns text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    args text := format('%L, %L', key_column, ignore_columns::text);
BEGIN
    EXECUTE format('CREATE TRIGGER nearcache_notify_insert AFTER INSERT ON %s
                    REFERENCING NEW TABLE AS nearcache_new
                    FOR EACH STATEMENT EXECUTE FUNCTION nearcache_notify(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER nearcache_notify_update AFTER UPDATE ON %s
                    REFERENCING OLD TABLE AS nearcache_old NEW TABLE AS nearcache_new
                    FOR EACH STATEMENT EXECUTE FUNCTION nearcache_notify(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER nearcache_notify_delete AFTER DELETE ON %s
                    REFERENCING OLD TABLE AS nearcache_old
                    FOR EACH STATEMENT EXECUTE FUNCTION nearcache_notify(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER nearcache_notify_truncate AFTER TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION nearcache_notify(%s)', tbl, args);
END
$$;

-- Removes what nearcache_attach added.
CREATE FUNCTION nearcache_detach(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS nearcache_notify_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS nearcache_notify_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS nearcache_notify_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS nearcache_notify_truncate ON %s', tbl);
END
$$;

SELECT nearcache_attach('organizations', 'id', '{updated_at}');
SELECT nearcache_attach('users', 'id', '{updated_at,last_seen_at}');
