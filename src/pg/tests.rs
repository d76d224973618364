//! `#[pg_test]`s of the SQL surface, run inside a pgrx-managed server (each test in
//! its own transaction). End-to-end delivery by the worker is covered by
//! `tests/integration`, which needs committed transactions.

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, v text, n numeric)").unwrap();
        Spi::run("INSERT INTO t VALUES (1, 'a', 1.50), (2, NULL, 2)").unwrap();
    }

    #[pg_test]
    fn errors_a_retry_cannot_fix_fail_the_sink() {
        use crate::engine::error::ErrorKind;
        use crate::pg::worker::{kind_of_sqlstate, sqlstate_text};
        assert_eq!(sqlstate_text(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE as i32), "42P01");
        for code in
            [PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN]
        {
            assert_eq!(kind_of_sqlstate(code as i32), ErrorKind::Permanent, "{code:?}");
        }
        for code in
            [PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED, PgSqlErrorCode::ERRCODE_RAISE_EXCEPTION, PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE]
        {
            assert_eq!(kind_of_sqlstate(code as i32), ErrorKind::Transient, "{code:?}");
        }
    }

    #[pg_test]
    fn create_sink_writes_catalog_and_publication() {
        setup();
        let id =
            Spi::get_one::<i64>("SELECT sink.create_sink('s1', 't', 'table', '{\"table\": \"t_copy\"}', envelope => 'upsert')").unwrap().unwrap();
        let row = Spi::get_three::<String, String, String>(
            "SELECT envelope, array_to_string(key_columns, ','), options->>'table' FROM sink.sinks WHERE id = (SELECT max(id) FROM sink.sinks)",
        )
        .unwrap();
        assert_eq!(row, (Some("upsert".into()), Some("id".into()), Some("public.t_copy".into())));
        let pubs = Spi::get_one::<i64>(&format!("SELECT count(*) FROM pg_publication WHERE pubname = 'pg_sink_{id}'")).unwrap();
        assert_eq!(pubs, Some(1));
        // The target was created with the source's columns and the key as primary key.
        let pk = Spi::get_one::<String>(
            "SELECT string_agg(a.attname, ',') FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) WHERE i.indrelid = 't_copy'::regclass AND i.indisprimary",
        )
        .unwrap();
        assert_eq!(pk.as_deref(), Some("id"));
        assert_eq!(Spi::get_one::<String>("SELECT state FROM sink.status WHERE name = 's1'").unwrap().as_deref(), Some("running"));
    }

    #[pg_test]
    fn preview_reads_the_snapshot_without_delivering() {
        setup();
        Spi::run(
            "SELECT sink.create_sink('s2', 't', 'file', '{\"path\": \"/tmp/pg_sink_pgtest_out\", \"schedule\": \"manual\"}', envelope => 'upsert')",
        )
        .unwrap();
        let value = Spi::get_one::<String>("SELECT value FROM sink.preview('s2', 1)").unwrap();
        assert_eq!(value.as_deref(), Some("{\"id\":1,\"v\":\"a\",\"n\":\"1.50\"}"));
        let op = Spi::get_one::<String>("SELECT string_agg(op, ',') FROM sink.preview('s2', 5)").unwrap();
        assert_eq!(op.as_deref(), Some("read,read"));
        assert_eq!(Spi::get_one::<i64>("SELECT rows_delivered FROM sink.status WHERE name = 's2'").unwrap(), Some(0));
    }

    #[pg_test(error = "sink \"s3\" must start in a fresh read committed transaction")]
    fn sync_refuses_to_create_a_slot_after_writes() {
        setup();
        Spi::run("SELECT sink.create_sink('s3', 't', 'file', '{\"path\": \"/tmp/pg_sink_pgtest_out\", \"schedule\": \"manual\"}')").unwrap();
        Spi::run("SELECT sink.sync('s3')").unwrap();
    }

    #[pg_test(error = "unknown connector \"kafkaa\"")]
    fn unknown_connector_is_refused() {
        setup();
        Spi::run("SELECT sink.create_sink('s4', 't', 'kafkaa')").unwrap();
    }

    #[pg_test(error = "upsert key could not be validated as unique")]
    fn upsert_key_must_be_unique() {
        setup();
        Spi::run("SELECT sink.create_sink('s5', 't', 'file', '{\"path\": \"/tmp/x\"}', envelope => 'upsert', key => ARRAY['v'])").unwrap();
    }

    #[pg_test]
    fn pause_resume_and_drop() {
        setup();
        Spi::run("SELECT sink.create_sink('s6', 't', 'file', '{\"path\": \"/tmp/x\"}')").unwrap();
        Spi::run("SELECT sink.pause_sink('s6')").unwrap();
        assert_eq!(Spi::get_one::<String>("SELECT state FROM sink.sinks WHERE name = 's6'").unwrap().as_deref(), Some("paused"));
        Spi::run("SELECT sink.resume_sink('s6')").unwrap();
        assert_eq!(Spi::get_one::<String>("SELECT state FROM sink.sinks WHERE name = 's6'").unwrap().as_deref(), Some("running"));
        assert_eq!(Spi::get_one::<bool>("SELECT sink.drop_sink('s6')").unwrap(), Some(true));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM sink.sinks WHERE name = 's6'").unwrap(), Some(0));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pg_publication WHERE pubname LIKE 'pg_sink_%'").unwrap(), Some(0));
    }
}
