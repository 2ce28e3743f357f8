-- The reference service's schema: organizations and their users.
-- updated_at is maintained by the database (see nearcache_touch_updated_at below), so no writer
-- can forget it.

CREATE TABLE organizations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    plan        text NOT NULL DEFAULT 'free',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id        uuid NOT NULL REFERENCES organizations (id),
    email         text NOT NULL UNIQUE,
    name          text NOT NULL,
    active        boolean NOT NULL DEFAULT true,
    last_seen_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX users_org_id_idx ON users (org_id);

-- BEFORE UPDATE: bump updated_at when a column other than updated_at and the columns named in
-- the trigger's arguments changed. A login that only records last_seen_at therefore leaves
-- updated_at alone, and cached copies stay exact.
CREATE FUNCTION nearcache_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    skip text[] := array_append(TG_ARGV::text[], 'updated_at');
BEGIN
    IF (to_jsonb(NEW) - skip) IS DISTINCT FROM (to_jsonb(OLD) - skip) THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER organizations_touch_updated_at BEFORE UPDATE ON organizations
    FOR EACH ROW EXECUTE FUNCTION nearcache_touch_updated_at();
CREATE TRIGGER users_touch_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION nearcache_touch_updated_at('last_seen_at');
