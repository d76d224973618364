//! Schema changes in WAL order: the extension's event trigger (`pg_sink_ddl`, on
//! `ALTER TABLE`) calls `report_schema_change` for each captured table a command
//! altered, which writes the table's shape before and after into the WAL as a
//! sealed transactional logical message ([`crate::engine::schema_change`]), so
//! sinks learn of the change at its place in the stream, with or without DML
//! after it. `sink.source_shapes` keeps each captured table's last shape. First,
//! sinks with `schema.gate` that could not follow the change refuse it
//! ([`crate::engine::schema_gate`]): the `ALTER TABLE` fails, naming the sink.

use pgrx::prelude::*;

use crate::engine::schema_change::{SchemaChange, DDL_PREFIX};
use crate::engine::schema_gate;
use crate::engine::seal;
use crate::pg::catalog;
use crate::pg::errors::{fail, Code};
use crate::pg::identity::as_superuser;
use crate::pg::spi::{select, select_one, update};

/// The table's shape as the report carries it (JSON text).
fn shape_of(relid: &str) -> Option<String> {
    select_one("SELECT sink.relation_shape($1::oid)::text", &[Some(relid)])
}

/// Remember a newly captured table's shape (as the extension's superuser), so its
/// first schema change has something to be compared with.
pub(crate) fn record_source_shape(relid: u32) {
    let relid = relid.to_string();
    if let Some(shape) = shape_of(&relid) {
        update(
            "INSERT INTO sink.source_shapes (relid, shape) VALUES ($1::oid, $2::jsonb) ON CONFLICT (relid) DO UPDATE SET shape = EXCLUDED.shape",
            &[Some(&relid), Some(&shape)],
        );
    }
}

/// Called by the event trigger for a table an `ALTER TABLE` changed: when a sink
/// captures it and its shape differs from the last one seen, write the sealed
/// report into the WAL and keep the new shape. Not callable by other roles.
#[pg_extern(volatile)]
fn report_schema_change(relid: pg_sys::Oid) {
    let relid = relid.to_u32().to_string();
    let refused = as_superuser(|| {
        if select_one("SELECT 'x' FROM sink.sinks WHERE source = $1::oid::regclass LIMIT 1", &[Some(&relid)]).is_none() {
            return None;
        }
        let Some(after) = shape_of(&relid) else { return None };
        let before = select_one("SELECT shape::text FROM sink.source_shapes WHERE relid = $1::oid", &[Some(&relid)]);
        let same = before.as_deref().is_some_and(|b| {
            serde_json::from_str::<serde_json::Value>(b).ok() == serde_json::from_str::<serde_json::Value>(&after).ok()
        });
        if same {
            return None;
        }
        let payload = format!("{{\"relid\": {relid}, \"before\": {}, \"after\": {after}}}", before.as_deref().unwrap_or("null"));
        if let Some(refusal) = gate(&relid, &payload) {
            return Some(refusal);
        }
        let sealed = seal::seal(&catalog::message_key(), DDL_PREFIX, &payload);
        select("SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)::text", &[Some(DDL_PREFIX), Some(&sealed)]);
        update(
            "INSERT INTO sink.source_shapes (relid, shape) VALUES ($1::oid, $2::jsonb) ON CONFLICT (relid) DO UPDATE SET shape = EXCLUDED.shape",
            &[Some(&relid), Some(&after)],
        );
        None
    });
    if let Some((sink, what, reason)) = refused {
        fail(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("sink \"{sink}\" could not follow this schema change"),
            Some(format!("Schema change of {what}: {reason}.")),
            Some(format!(
                "Prepare the sink's target first and run the ALTER TABLE again, or let the change through with SELECT sink.alter_sink('{sink}', '{{\"schema.gate\": false}}')."
            )),
        );
    }
}

/// The first sink with `schema.gate` over the table that could not follow the
/// change: (its name, the change, why).
fn gate(relid: &str, payload: &str) -> Option<(String, String, String)> {
    let change = SchemaChange::parse(payload.as_bytes()).ok()?;
    change.before.as_ref()?;
    for name in select("SELECT name::text FROM sink.sinks WHERE source = $1::oid::regclass ORDER BY name", &[Some(relid)]).into_iter().flatten().flatten() {
        let Some(sink) = catalog::find_by_name(&name) else { continue };
        let Ok(def) = catalog::definition(&sink) else { continue };
        if !def.schema_gate {
            continue;
        }
        let verdict = schema_gate::check(&change, &def).and_then(|()| {
            if def.registry.is_none() {
                return Ok(());
            }
            let rel = crate::pg::delivery::current_relation(&sink);
            schema_gate::check_registry(&rel, &def, &sink.name)
        });
        if let Err(reason) = verdict {
            return Some((name, change.describe(), reason));
        }
    }
    None
}

pgrx::extension_sql!(
    r#"
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
"#,
    name = "schema_change_trigger",
    requires = [report_schema_change],
);
