-- pg_sink catalog. These tables are the source of truth: sinks, their connections,
-- secrets and credentials, who may use them, and each sink's delivered progress.
-- Readable with plain SQL; secret and credential values are readable by no one but
-- superusers (the worker uses them).

-- created_by: which surface made the object (function, materialize, risingwave, kinetica).

-- Secrets and Kinetica credentials (kind 'credential': value is a JSON object with
-- type, identity, secret and options) share one name space.
CREATE TABLE secrets (
    name       text PRIMARY KEY,
    kind       text NOT NULL DEFAULT 'secret' CHECK (kind IN ('secret', 'credential')),
    owner      regrole NOT NULL,
    value      text NOT NULL,
    created_by text NOT NULL DEFAULT 'function',
    created_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON secrets FROM PUBLIC;

CREATE TABLE connections (
    name       text PRIMARY KEY,
    connector  text NOT NULL,
    owner      regrole NOT NULL,
    -- option values are text; {"secret": "name"} refers to a secret
    options    jsonb NOT NULL DEFAULT '{}',
    created_by text NOT NULL DEFAULT 'function',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- USAGE granted on a connection, secret or credential (grantee NULL: PUBLIC).
-- Owners (and members of the owning role) always have it.
CREATE TABLE usage_grants (
    kind       text NOT NULL CHECK (kind IN ('connection', 'secret', 'credential')),
    name       text NOT NULL,
    grantee    regrole,
    granted_by regrole NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (kind, name, grantee)
);

CREATE TABLE sinks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    owner            regrole NOT NULL,
    source           regclass NOT NULL,
    columns          text[],
    row_filter       text,
    connector        text NOT NULL,
    connection       text REFERENCES connections (name),
    envelope         text NOT NULL,
    key_format       text NOT NULL,
    value_format     text NOT NULL,
    key_columns      text[] NOT NULL DEFAULT '{}',
    key_not_enforced boolean NOT NULL DEFAULT false,
    snapshot         boolean NOT NULL,
    schedule         text NOT NULL CHECK (schedule IN ('continuous', 'manual')),
    -- the full option map the sink was defined with (sink and connector options)
    options          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'paused', 'failed')),
    slot_name        name NOT NULL,
    publication_name name NOT NULL,
    created_by       text NOT NULL DEFAULT 'function',
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- <system identifier>.<timeline>.<database oid> it was made in or adopted by:
    -- a restored or cloned database pauses the sinks it copied (README, Operating)
    home             text
);

CREATE TABLE progress (
    sink_id                bigint PRIMARY KEY REFERENCES sinks (id) ON DELETE CASCADE,
    -- everything that committed at or before this LSN is durable at the target
    confirmed_lsn          pg_lsn,
    confirmed_at           timestamptz,
    -- commit time of the last delivered transaction
    last_commit_at         timestamptz,
    -- last time the sink had nothing pending
    caught_up_at           timestamptz,
    snapshot_done          boolean NOT NULL DEFAULT false,
    rows_delivered         bigint NOT NULL DEFAULT 0,
    bytes_delivered        bigint NOT NULL DEFAULT 0,
    transactions_delivered bigint NOT NULL DEFAULT 0,
    batches                bigint NOT NULL DEFAULT 0,
    last_error             text,
    -- what to do about it (the error's hint)
    last_error_hint        text,
    last_error_at          timestamptz,
    errors                 bigint NOT NULL DEFAULT 0,
    -- the WAL-retention guard's view of the sink (max_retained_wal, its policy)
    wal_limit_bytes        bigint,
    wal_retention_policy   text,
    -- rates, exponentially weighted over about a minute as of rate_at (the status
    -- view decays them to now)
    rows_per_second        float8 NOT NULL DEFAULT 0,
    bytes_per_second       float8 NOT NULL DEFAULT 0,
    rate_at                timestamptz,
    -- how long each of the last 100 batches took to deliver, milliseconds
    batch_ms               float8[] NOT NULL DEFAULT '{}',
    -- failed steps that were retried (errors also counts the one that failed the sink)
    retries                bigint NOT NULL DEFAULT 0
);

-- Records a sink's target refused for good, set aside by its errors.policy
-- (README, "Operating pg_sink"): where they were (the commit LSN and the place in
-- the transaction; for the initial snapshot, its LSN, chunk and place there),
-- their key, why, and under dead_letter the change itself, which
-- sink.retry_dead_letters() delivers again.
CREATE TABLE dead_letters (
    id         bigserial PRIMARY KEY,
    sink_id    bigint NOT NULL REFERENCES sinks (id) ON DELETE CASCADE,
    lsn        pg_lsn NOT NULL,
    ordinal    integer NOT NULL,
    -- the snapshot chunk, -1 for a streamed change
    chunk      integer NOT NULL DEFAULT -1,
    op         text NOT NULL,
    relation   text NOT NULL,
    key        jsonb,
    -- NULL under errors.policy skip
    change     jsonb,
    error      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sink_id, lsn, chunk, ordinal)
);

-- A sink's backfill (sink.backfill()): its source read again by key, in chunks,
-- while its changes stream on (README, "Backfill"). One row per sink, for its
-- last backfill: where it stands, and when it finished.
CREATE TABLE backfills (
    sink_id        bigint PRIMARY KEY REFERENCES sinks (id) ON DELETE CASCADE,
    -- counts the sink's backfills; watermarks name it, so those of an earlier one are ignored
    id             bigint NOT NULL,
    -- rows of the source to read (a condition on its columns); NULL: all
    filter         text,
    -- the key the chunks are read in order of
    key_columns    text[] NOT NULL,
    -- the key of the last row read: the next chunk starts after it (NULL: at the start)
    last_key       text[],
    chunks         bigint NOT NULL DEFAULT 0,
    rows_read      bigint NOT NULL DEFAULT 0,
    -- rows delivered as reads (the others the stream carried in newer versions)
    rows_delivered bigint NOT NULL DEFAULT 0,
    -- the planner's estimate of the source's rows when it started
    rows_estimate  bigint,
    requested_by   regrole NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    -- stopped by sink.cancel_backfill() before it read everything
    cancelled      boolean NOT NULL DEFAULT false
);
GRANT SELECT ON backfills TO PUBLIC;
ALTER TABLE backfills ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_sees ON backfills FOR SELECT USING (EXISTS (SELECT 1 FROM sinks s WHERE s.id = sink_id));

-- The key of the seals on the extension's own logical messages (dead-letter
-- replays, schema-change reports): pg_logical_emit_message is open to every
-- role, so the worker acts only on messages sealed with this key. Random at
-- CREATE EXTENSION (gen_random_uuid draws from the server's strong random source).
CREATE TABLE message_key (key bytea NOT NULL);
INSERT INTO message_key VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
REVOKE ALL ON message_key FROM PUBLIC;

-- The last shape of each captured table (columns by attribute number, key), as
-- the schema-change event trigger saw it: what the next ALTER TABLE is compared with.
CREATE TABLE source_shapes (relid oid PRIMARY KEY, shape jsonb NOT NULL);
REVOKE ALL ON source_shapes FROM PUBLIC;

-- Moves with every change to sinks, connections, secrets and credentials, in the
-- changing transaction: a worker resolves a sink's options (secrets included)
-- again only when it moved, not at every step.
CREATE TABLE definitions_version (n bigint NOT NULL);
INSERT INTO definitions_version VALUES (0);
REVOKE ALL ON definitions_version FROM PUBLIC;

CREATE FUNCTION bump_definitions_version() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE sink.definitions_version SET n = n + 1;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION bump_definitions_version() FROM PUBLIC;
CREATE TRIGGER definitions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON sinks
    FOR EACH STATEMENT EXECUTE FUNCTION bump_definitions_version();
CREATE TRIGGER definitions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON connections
    FOR EACH STATEMENT EXECUTE FUNCTION bump_definitions_version();
CREATE TRIGGER definitions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secrets
    FOR EACH STATEMENT EXECUTE FUNCTION bump_definitions_version();

CREATE VIEW status AS
SELECT s.name,
       s.state,
       s.connector,
       s.envelope,
       s.value_format AS format,
       s.schedule,
       s.source,
       p.confirmed_lsn,
       p.confirmed_at,
       CASE WHEN p.confirmed_lsn IS NULL THEN NULL
            ELSE greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), p.confirmed_lsn), 0)::bigint END AS lag_bytes,
       -- seconds since the sink last had nothing pending (the worker notes it when idle)
       extract(epoch FROM now() - coalesce(p.caught_up_at, s.created_at))::float8 AS lag_seconds,
       CASE WHEN r.restart_lsn IS NULL THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), r.restart_lsn)::bigint END AS retained_wal_bytes,
       r.active AS slot_active,
       p.snapshot_done,
       p.rows_delivered,
       p.bytes_delivered,
       p.transactions_delivered,
       p.batches,
       p.last_error,
       p.last_error_hint,
       p.last_error_at,
       p.errors,
       p.wal_limit_bytes,
       p.wal_retention_policy,
       coalesce(round((p.rows_per_second * exp(-least(extract(epoch FROM now() - p.rate_at), 3600)::float8 / 60))::numeric, 1)::float8, 0) AS rows_per_second,
       coalesce(round((p.bytes_per_second * exp(-least(extract(epoch FROM now() - p.rate_at), 3600)::float8 / 60))::numeric, 1)::float8, 0) AS bytes_per_second,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(p.batch_ms) x) AS batch_p50_ms,
       (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY x) FROM unnest(p.batch_ms) x) AS batch_p99_ms,
       p.retries,
       (SELECT count(*) FROM dead_letters d WHERE d.sink_id = s.id AND d.change IS NOT NULL) AS dead_letters,
       (SELECT count(*) FROM dead_letters d WHERE d.sink_id = s.id AND d.change IS NULL) AS records_skipped,
       -- what the worker does now (a snapshot's rows read); superusers and
       -- pg_read_all_stats see it
       (SELECT a.query FROM pg_stat_activity a
         WHERE a.application_name = 'pg_sink sink ' || s.name AND a.backend_type <> 'walsender' LIMIT 1) AS activity,
       -- the last backfill (sink.backfill()): running or done, rows read, and,
       -- from the planner's estimate of the source's rows, percent and seconds to go
       CASE WHEN b.sink_id IS NULL THEN NULL WHEN b.finished_at IS NULL THEN 'running' WHEN b.cancelled THEN 'cancelled' ELSE 'done' END AS backfill,
       b.rows_read AS backfill_rows,
       CASE WHEN b.finished_at IS NOT NULL AND NOT b.cancelled THEN 100::float8
            WHEN coalesce(b.rows_estimate, 0) <= 0 THEN NULL
            ELSE least(round(100.0 * b.rows_read / b.rows_estimate, 1), 99.9)::float8 END AS backfill_percent,
       CASE WHEN b.finished_at IS NOT NULL OR b.rows_read = 0 OR coalesce(b.rows_estimate, 0) <= b.rows_read THEN NULL
            ELSE round(extract(epoch FROM now() - b.started_at)::numeric * (b.rows_estimate - b.rows_read) / b.rows_read)::float8 END AS backfill_eta_seconds
  FROM sinks s
  LEFT JOIN progress p ON p.sink_id = s.id
  LEFT JOIN backfills b ON b.sink_id = s.id
  LEFT JOIN pg_replication_slots r ON r.slot_name = s.slot_name AND r.database = current_database();

-- Every object in one place, whatever created it (no secret values).
CREATE VIEW objects AS
SELECT 'sink'::text AS kind, name, owner::text AS owner, connector, created_by, created_at FROM sinks
UNION ALL
SELECT 'connection', name, owner::text, connector, created_by, created_at FROM connections
UNION ALL
SELECT kind, name, owner::text, NULL, created_by, created_at FROM secrets;

-- Who sees which rows (README, "Privileges"): a role sees the sinks it owns (or
-- whose owner it is a member of) and their progress, the connections it owns or
-- may use, the grants made to it or by it, and the names of its secrets. Secret
-- values are readable by no one through SQL; the views check as the caller.
GRANT SELECT ON sinks, connections, progress, status, usage_grants, objects, dead_letters TO PUBLIC;
GRANT SELECT (name, kind, owner, created_by, created_at) ON secrets TO PUBLIC;
ALTER VIEW status SET (security_invoker = true);
ALTER VIEW objects SET (security_invoker = true);

ALTER TABLE sinks ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_sees ON sinks FOR SELECT USING (pg_catalog.pg_has_role(owner, 'MEMBER'));
ALTER TABLE progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_sees ON progress FOR SELECT USING (EXISTS (SELECT 1 FROM sinks s WHERE s.id = sink_id));
ALTER TABLE dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_sees ON dead_letters FOR SELECT USING (EXISTS (SELECT 1 FROM sinks s WHERE s.id = sink_id));
ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_sees ON secrets FOR SELECT USING (pg_catalog.pg_has_role(owner, 'MEMBER'));
ALTER TABLE usage_grants ENABLE ROW LEVEL SECURITY;
CREATE POLICY party_sees ON usage_grants FOR SELECT
    USING (grantee IS NULL OR pg_catalog.pg_has_role(grantee, 'MEMBER') OR pg_catalog.pg_has_role(granted_by, 'MEMBER'));
ALTER TABLE connections ENABLE ROW LEVEL SECURITY;
CREATE POLICY user_sees ON connections FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'MEMBER')
           OR EXISTS (SELECT 1 FROM usage_grants g WHERE g.kind = 'connection' AND g.name = connections.name));

-- Members of sink_creator may create sinks (so may superusers and roles with
-- REPLICATION, which may create slots anyway). Roles are cluster-wide: the role
-- is made once and kept when the extension is dropped.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'sink_creator') THEN
        CREATE ROLE sink_creator NOLOGIN;
    END IF;
END $$;

-- pg_dump keeps sinks, connections and grants (extension configuration); not
-- progress (it belongs to the original's slot: a restored database pauses the
-- sinks it copied, and resuming one delivers again from a new snapshot), and not
-- secret values: sink.secrets_script() writes them out when asked (superuser).
SELECT pg_catalog.pg_extension_config_dump('sinks', '');
SELECT pg_catalog.pg_extension_config_dump('sinks_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('connections', '');
SELECT pg_catalog.pg_extension_config_dump('usage_grants', '');
SELECT pg_catalog.pg_extension_config_dump('source_shapes', '');
