-- The reference service's tables, attached to nearcache's triggers (0003). Every column the API
-- serves must notify, updated_at included; only last_seen_at, which changes on every login and
-- is never cached, is ignored. A test reads these lists back and fails if a served column is in
-- one.
SELECT nearcache_attach('organizations', 'id');
SELECT nearcache_attach('users', 'id', '{last_seen_at}');
