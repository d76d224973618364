-- pg_sink 0.1.0 -> 0.2.0 (ALTER EXTENSION pg_sink UPDATE; README, "Operating
-- pg_sink"). Install the 0.2.0 library first and restart: until this script has
-- run, the library refuses its SQL functions and starts no sink (their slots keep
-- every change meanwhile). It runs in one transaction: if it fails (for example
-- because an object of yours depends on one of pg_sink's functions), nothing
-- changed.

-- Catalog ------------------------------------------------------------------

-- Where each sink runs (src/pg/home.rs): the sinks there are at home here.
ALTER TABLE sinks ADD COLUMN home text;
UPDATE sinks SET home = (SELECT system_identifier FROM pg_catalog.pg_control_system())::text || '.'
    || ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int::text || '.'
    || (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())::text;

ALTER TABLE progress
    ADD COLUMN last_error_hint text,
    ADD COLUMN wal_limit_bytes bigint,
    ADD COLUMN wal_retention_policy text,
    ADD COLUMN rows_per_second float8 NOT NULL DEFAULT 0,
    ADD COLUMN bytes_per_second float8 NOT NULL DEFAULT 0,
    ADD COLUMN rate_at timestamptz,
    ADD COLUMN batch_ms float8[] NOT NULL DEFAULT '{}',
    ADD COLUMN retries bigint NOT NULL DEFAULT 0;

-- A partitioned source's changes are published under its own name, as its
-- snapshot reads them (0.1.0 published them under each partition's).
DO $$
DECLARE p name;
BEGIN
    FOR p IN SELECT s.publication_name FROM sinks s JOIN pg_catalog.pg_publication pb ON pb.pubname = s.publication_name LOOP
        EXECUTE pg_catalog.format('ALTER PUBLICATION %I SET (publish_via_partition_root = true)', p);
    END LOOP;
END $$;

-- Records a sink's target refused for good, set aside by its errors.policy
-- (README, "Operating pg_sink").
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
GRANT SELECT ON dead_letters TO PUBLIC;
ALTER TABLE dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_sees ON dead_letters FOR SELECT USING (EXISTS (SELECT 1 FROM sinks s WHERE s.id = sink_id));

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

-- The status view gains columns in the middle: made again.
DROP VIEW status;
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
GRANT SELECT ON status TO PUBLIC;
GRANT SELECT (name, kind, owner, created_by, created_at) ON secrets TO PUBLIC;
ALTER VIEW status SET (security_invoker = true);
ALTER VIEW objects SET (security_invoker = true);

ALTER TABLE sinks ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_sees ON sinks FOR SELECT USING (pg_catalog.pg_has_role(owner, 'MEMBER'));
ALTER TABLE progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_sees ON progress FOR SELECT USING (EXISTS (SELECT 1 FROM sinks s WHERE s.id = sink_id));
ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_sees ON secrets FOR SELECT USING (pg_catalog.pg_has_role(owner, 'MEMBER'));
ALTER TABLE usage_grants ENABLE ROW LEVEL SECURITY;
CREATE POLICY party_sees ON usage_grants FOR SELECT
    USING (grantee IS NULL OR pg_catalog.pg_has_role(grantee, 'MEMBER') OR pg_catalog.pg_has_role(granted_by, 'MEMBER'));
ALTER TABLE connections ENABLE ROW LEVEL SECURITY;
CREATE POLICY user_sees ON connections FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'MEMBER')
           OR EXISTS (SELECT 1 FROM usage_grants g WHERE g.kind = 'connection' AND g.name = connections.name));

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'sink_creator') THEN
        CREATE ROLE sink_creator NOLOGIN;
    END IF;
END $$;

SELECT pg_catalog.pg_extension_config_dump('sinks', '');
SELECT pg_catalog.pg_extension_config_dump('sinks_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('connections', '');
SELECT pg_catalog.pg_extension_config_dump('usage_grants', '');
SELECT pg_catalog.pg_extension_config_dump('source_shapes', '');

-- Functions ----------------------------------------------------------------

-- 0.1.0's functions written in Rust (and SQL functions over them) go; 0.2.0's
-- are made below.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure
               FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_sink'
              WHERE p.prolang = (SELECT oid FROM pg_catalog.pg_language WHERE lanname = 'c') OR p.prosqlbody IS NOT NULL
              ORDER BY p.prosqlbody IS NULL
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %s', f);
    END LOOP;
END $$;

-- generated by scripts/upgrade_functions.py from pg_sink--0.2.0.sql: do not edit below

-- pg_sink::pg::sql::connections::alter_connection
CREATE  FUNCTION "alter_connection"(
	"name" TEXT, /* & str */
	"options" jsonb /* JsonB */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'alter_connection_wrapper';

-- pg_sink::pg::sql::credentials::alter_credential
CREATE  FUNCTION "alter_credential"(
	"name" TEXT, /* & str */
	"options" jsonb /* JsonB */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'alter_credential_wrapper';

-- pg_sink::pg::sql::secrets::alter_secret
CREATE  FUNCTION "alter_secret"(
	"name" TEXT, /* & str */
	"value" TEXT /* & str */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'alter_secret_wrapper';

-- pg_sink::pg::sql::sinks::alter_sink
CREATE  FUNCTION "alter_sink"(
	"name" TEXT, /* & str */
	"options" jsonb /* JsonB */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'alter_sink_wrapper';

-- pg_sink::pg::sql::sync::await_delivered_at
CREATE  FUNCTION "await_delivered_at"(
	"name" TEXT, /* & str */
	"lsn" TEXT, /* & str */
	"timeout_ms" double precision /* f64 */
) RETURNS TEXT /* String */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'await_delivered_at_wrapper';

-- requires:
--   await_delivered_at


CREATE FUNCTION sink.await_delivered(name text, lsn pg_lsn DEFAULT NULL, timeout interval DEFAULT '1 minute')
RETURNS pg_lsn LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT sink.await_delivered_at(name, coalesce(lsn, pg_catalog.pg_current_wal_lsn())::text,
                                   pg_catalog.date_part('epoch', timeout) * 1000)::pg_lsn;
END;
COMMENT ON FUNCTION sink.await_delivered(text, pg_lsn, interval) IS
    'Wait until the sink has durably delivered everything committed at or before lsn (default: now); returns its confirmed LSN.';

-- pg_sink::pg::sql::backfill::backfill
CREATE  FUNCTION "backfill"(
	"name" TEXT, /* & str */
	"filter" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS jsonb /* JsonB */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'backfill_wrapper';

-- pg_sink::pg::sql::backfill::cancel_backfill
CREATE  FUNCTION "cancel_backfill"(
	"name" TEXT /* & str */
) RETURNS bool /* bool */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'cancel_backfill_wrapper';

-- pg_sink::pg::sql::hashes::crc32
CREATE  FUNCTION "crc32"(
	"data" bytea /* & [u8] */
) RETURNS bigint /* i64 */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'crc32_bytea_wrapper';

-- pg_sink::pg::sql::hashes::crc32
CREATE  FUNCTION "crc32"(
	"data" TEXT /* & str */
) RETURNS bigint /* i64 */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'crc32_text_wrapper';

-- pg_sink::pg::sql::connections::create_connection
CREATE  FUNCTION "create_connection"(
	"name" TEXT, /* & str */
	"connector" TEXT, /* & str */
	"options" jsonb DEFAULT '{}', /* JsonB */
	"if_not_exists" bool DEFAULT false /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_connection_wrapper';

-- pg_sink::pg::sql::credentials::create_credential
CREATE  FUNCTION "create_credential"(
	"name" TEXT, /* & str */
	"kind" TEXT, /* & str */
	"identity" TEXT DEFAULT NULL, /* Option < & str > */
	"secret" TEXT DEFAULT NULL, /* Option < & str > */
	"options" jsonb DEFAULT '{}', /* JsonB */
	"if_not_exists" bool DEFAULT false /* bool */
) RETURNS bool /* bool */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_credential_wrapper';

-- pg_sink::pg::sql::secrets::create_secret
CREATE  FUNCTION "create_secret"(
	"name" TEXT, /* & str */
	"value" TEXT, /* & str */
	"if_not_exists" bool DEFAULT false /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_secret_wrapper';

-- pg_sink::pg::sql::sinks::create_sink
CREATE  FUNCTION "create_sink"(
	"name" TEXT, /* & str */
	"source" TEXT, /* & str */
	"connector" TEXT DEFAULT NULL, /* Option < & str > */
	"options" jsonb DEFAULT '{}', /* JsonB */
	"envelope" TEXT DEFAULT NULL, /* Option < & str > */
	"format" TEXT DEFAULT NULL, /* Option < & str > */
	"key" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < String > > */
	"key_not_enforced" bool DEFAULT false, /* bool */
	"snapshot" bool DEFAULT NULL, /* Option < bool > */
	"connection" TEXT DEFAULT NULL, /* Option < & str > */
	"if_not_exists" bool DEFAULT false /* bool */
) RETURNS bigint /* i64 */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_sink_wrapper';

-- pg_sink::pg::sql::dead_letters::discard_dead_letters
CREATE  FUNCTION "discard_dead_letters"(
	"name" TEXT, /* & str */
	"ids" bigint[] DEFAULT NULL /* :: std :: option :: Option < Vec < i64 > > */
) RETURNS bigint /* i64 */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'discard_dead_letters_wrapper';

-- pg_sink::pg::sql::connections::drop_connection
CREATE  FUNCTION "drop_connection"(
	"name" TEXT, /* & str */
	"if_exists" bool DEFAULT false, /* bool */
	"cascade" bool DEFAULT false /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_connection_wrapper';

-- pg_sink::pg::sql::credentials::drop_credential
CREATE  FUNCTION "drop_credential"(
	"name" TEXT, /* & str */
	"if_exists" bool DEFAULT false /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_credential_wrapper';

-- pg_sink::pg::sql::secrets::drop_secret
CREATE  FUNCTION "drop_secret"(
	"name" TEXT, /* & str */
	"if_exists" bool DEFAULT false /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_secret_wrapper';

-- pg_sink::pg::sql::sinks::drop_sink
CREATE  FUNCTION "drop_sink"(
	"name" TEXT, /* & str */
	"if_exists" bool DEFAULT false /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_sink_wrapper';

-- pg_sink::pg::sql::execute::execute
CREATE  FUNCTION "execute"(
	"sql" TEXT /* & str */
) RETURNS TABLE (
	"command" TEXT,  /* String */
	"kind" TEXT,  /* String */
	"name" TEXT,  /* String */
	"owner" TEXT,  /* Option < String > */
	"connector" TEXT,  /* Option < String > */
	"details" jsonb  /* JsonB */
)
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'execute_wrapper';

-- pg_sink::pg::sql::export::export
CREATE  FUNCTION "export"(
	"query" TEXT, /* & str */
	"connector" TEXT DEFAULT NULL, /* Option < & str > */
	"options" jsonb DEFAULT '{}', /* JsonB */
	"name" TEXT DEFAULT NULL, /* Option < & str > */
	"envelope" TEXT DEFAULT NULL, /* Option < & str > */
	"format" TEXT DEFAULT NULL, /* Option < & str > */
	"key" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < String > > */
	"connection" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"rows" bigint,  /* i64 */
	"bytes" bigint,  /* i64 */
	"chunks" bigint,  /* i64 */
	"seconds" double precision  /* f64 */
)
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'export_wrapper';

-- pg_sink::pg::sql::grants::grant_usage
CREATE  FUNCTION "grant_usage"(
	"kind" TEXT, /* & str */
	"name" TEXT, /* & str */
	"role" TEXT /* & str */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'grant_usage_wrapper';

-- pg_sink::pg::sql::hashes::kafka_murmur2
CREATE  FUNCTION "kafka_murmur2"(
	"data" bytea /* & [u8] */
) RETURNS bigint /* i64 */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'kafka_murmur2_bytea_wrapper';

-- pg_sink::pg::sql::hashes::kafka_murmur2
CREATE  FUNCTION "kafka_murmur2"(
	"data" TEXT /* & str */
) RETURNS bigint /* i64 */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'kafka_murmur2_text_wrapper';

-- pg_sink::pg::sql::reference::options
CREATE  FUNCTION "options"() RETURNS TABLE (
	"connector" TEXT,  /* Option < String > */
	"option" TEXT,  /* String */
	"required" bool,  /* bool */
	"description" TEXT  /* Option < String > */
)
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'options_wrapper';

-- pg_sink::pg::sql::sinks::pause_sink
CREATE  FUNCTION "pause_sink"(
	"name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pause_sink_wrapper';

-- pg_sink::pg::sql::sync::preview
CREATE  FUNCTION "preview"(
	"name" TEXT, /* & str */
	"n" INT DEFAULT 10 /* i32 */
) RETURNS TABLE (
	"lsn" TEXT,  /* String */
	"op" TEXT,  /* String */
	"key" TEXT,  /* Option < String > */
	"value" TEXT,  /* Option < String > */
	"headers" jsonb  /* JsonB */
)
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'preview_wrapper';

-- pg_sink::pg::sql::schema_changes::report_schema_change
CREATE  FUNCTION "report_schema_change"(
	"relid" oid /* pg_sys :: Oid */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'report_schema_change_wrapper';

-- requires:
--   report_schema_change


-- A table's columns (attribute number, name, type, NOT NULL) and replica identity
-- key, as a schema-change report carries them.
CREATE FUNCTION sink.relation_shape(relid oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'schema', n.nspname, 'table', c.relname,
        'columns', coalesce((SELECT jsonb_agg(jsonb_build_object('attnum', a.attnum, 'name', a.attname,
                                   'type', format_type(a.atttypid, a.atttypmod), 'not_null', a.attnotnull) ORDER BY a.attnum)
                              FROM pg_attribute a
                             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '[]'),
        'key', coalesce((SELECT jsonb_agg(a.attname ORDER BY array_position(i.indkey::int2[], a.attnum))
                           FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                          WHERE i.indrelid = c.oid AND (i.indisreplident OR (i.indisprimary AND c.relreplident = 'd'))), '[]'))
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = relid
$$;

-- The tables sinks captured before the extension reported schema changes.
INSERT INTO sink.source_shapes (relid, shape)
SELECT DISTINCT source::oid, sink.relation_shape(source::oid) FROM sink.sinks
 WHERE sink.relation_shape(source::oid) IS NOT NULL
ON CONFLICT (relid) DO NOTHING;

-- Only the event trigger reports schema changes.
REVOKE ALL ON FUNCTION sink.report_schema_change(oid) FROM PUBLIC;

-- Runs as the extension's owner (report_schema_change is not PUBLIC). A sink with
-- schema.gate refuses a change it could not follow (SQLSTATE 55000): that error
-- fails the ALTER TABLE; any other failure here only warns.
CREATE FUNCTION sink.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT objid FROM pg_catalog.pg_event_trigger_ddl_commands()
              WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass
    LOOP
        BEGIN
            PERFORM sink.report_schema_change(r.objid);
        EXCEPTION WHEN object_not_in_prerequisite_state THEN
            RAISE;
        WHEN OTHERS THEN
            RAISE WARNING 'pg_sink could not report the schema change of %: %', r.objid::pg_catalog.regclass, SQLERRM;
        END;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION sink.capture_ddl() FROM PUBLIC;

CREATE EVENT TRIGGER pg_sink_ddl ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION sink.capture_ddl();

-- pg_sink::pg::sql::sinks::resume_sink
CREATE  FUNCTION "resume_sink"(
	"name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'resume_sink_wrapper';

-- pg_sink::pg::sql::sinks::resync
CREATE  FUNCTION "resync"(
	"name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'resync_wrapper';

-- pg_sink::pg::sql::dead_letters::retry_dead_letters
CREATE  FUNCTION "retry_dead_letters"(
	"name" TEXT, /* & str */
	"ids" bigint[] DEFAULT NULL /* :: std :: option :: Option < Vec < i64 > > */
) RETURNS bigint /* i64 */
VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'retry_dead_letters_wrapper';

-- pg_sink::pg::sql::grants::revoke_usage
CREATE  FUNCTION "revoke_usage"(
	"kind" TEXT, /* & str */
	"name" TEXT, /* & str */
	"role" TEXT /* & str */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'revoke_usage_wrapper';

-- pg_sink::pg::sql::hashes::seahash
CREATE  FUNCTION "seahash"(
	"data" bytea /* & [u8] */
) RETURNS NUMERIC /* pgrx :: AnyNumeric */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'seahash_bytea_wrapper';

-- pg_sink::pg::sql::hashes::seahash
CREATE  FUNCTION "seahash"(
	"data" TEXT /* & str */
) RETURNS NUMERIC /* pgrx :: AnyNumeric */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'seahash_text_wrapper';

-- pg_sink::pg::sql::secrets::secrets_script
CREATE  FUNCTION "secrets_script"() RETURNS TEXT /* String */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'secrets_script_wrapper';

-- pg_sink::pg::sql::launcher::start_launcher
CREATE  FUNCTION "start_launcher"() RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'start_launcher_wrapper';

-- pg_sink::pg::sql::sync::sync
CREATE  FUNCTION "sync"(
	"name" TEXT /* & str */
) RETURNS jsonb /* JsonB */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'sync_wrapper';

-- pg_sink::pg::sql::sinks::uid
CREATE  FUNCTION "uid"(
	"name" TEXT /* & str */
) RETURNS TEXT /* String */
STRICT STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'uid_wrapper';

-- requires:
--   start_launcher

-- finalize

-- The sinks of this database run without a restart.
SELECT sink.start_launcher();
