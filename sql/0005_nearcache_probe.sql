-- The end-to-end probe of instances that follow a relay (--source nats): every few seconds an
-- instance writes its own row here through its own pool and must read that key back from the
-- relay's stream, which proves that the relay reads this database and publishes where the
-- instance listens. Generic and idempotent (nearcache_pg::install_probe runs it on any
-- database with nearcache installed); rows of instances gone for an hour are deleted by the
-- probes of the others.
CREATE TABLE IF NOT EXISTS nearcache_probe (
    instance text PRIMARY KEY,
    n        bigint NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
SELECT nearcache_attach('nearcache_probe', 'instance');
