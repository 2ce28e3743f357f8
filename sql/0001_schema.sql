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

-- BEFORE UPDATE: bump updated_at when a column other than updated_at and the ignored ones
-- changed. The comparison is the trigger's WHEN clause, evaluated without calling a function, so
-- a login that only records last_seen_at costs nothing here and leaves updated_at alone, and
-- cached copies stay exact.
CREATE FUNCTION nearcache_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER organizations_touch_updated_at BEFORE UPDATE ON organizations
    FOR EACH ROW
    WHEN ((OLD.id, OLD.name, OLD.plan, OLD.created_at)
          IS DISTINCT FROM (NEW.id, NEW.name, NEW.plan, NEW.created_at))
    EXECUTE FUNCTION nearcache_touch_updated_at();
CREATE TRIGGER users_touch_updated_at BEFORE UPDATE ON users
    FOR EACH ROW
    WHEN ((OLD.id, OLD.org_id, OLD.email, OLD.name, OLD.active, OLD.created_at)
          IS DISTINCT FROM (NEW.id, NEW.org_id, NEW.email, NEW.name, NEW.active, NEW.created_at))
    EXECUTE FUNCTION nearcache_touch_updated_at();
