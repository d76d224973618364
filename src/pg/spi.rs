//! SPI adapters: text-in/text-out queries for the glue, the engine's
//! [`SqlSession`] (used by the `table` connector inside the batch's transaction) and
//! [`TypeResolver`] (user-defined types from `pg_type`).

use std::collections::HashMap;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::engine::change::{Relation, RelationMeta};
use crate::engine::connector::SqlSession;
use crate::engine::error::{Result, SinkError};
use crate::engine::pipeline::TypeResolver;
use crate::engine::types::{self, PgType, TypeKind};

pub type Rows = Vec<Vec<Option<String>>>;

fn args<'a>(params: &'a [Option<&'a str>]) -> Vec<DatumWithOid<'a>> {
    params.iter().map(|p| DatumWithOid::from(*p)).collect()
}

fn collect(table: pgrx::spi::SpiTupleTable<'_>) -> pgrx::spi::Result<Rows> {
    let mut rows = Vec::new();
    for row in table {
        let n = row.columns();
        let mut out = Vec::with_capacity(n);
        for i in 1..=n {
            out.push(row.get::<String>(i)?);
        }
        rows.push(out);
    }
    Ok(rows)
}

/// Read-only query; every output column must be text.
pub fn select(sql: &str, params: &[Option<&str>]) -> Rows {
    Spi::connect(|c| c.select(sql, None, &args(params)).and_then(collect)).unwrap_or_else(|e| spi_fail(sql, e))
}

/// Statement that may write; output columns (if any) must be text.
pub fn update(sql: &str, params: &[Option<&str>]) -> Rows {
    Spi::connect_mut(|c| c.update(sql, None, &args(params)).and_then(collect)).unwrap_or_else(|e| spi_fail(sql, e))
}

pub fn select_one(sql: &str, params: &[Option<&str>]) -> Option<String> {
    select(sql, params).into_iter().next().and_then(|r| r.into_iter().next().flatten())
}

fn spi_fail(sql: &str, e: pgrx::spi::Error) -> ! {
    super::errors::fail(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("pg_sink internal query failed: {e}"), Some(format!("Query: {sql}")), None)
}

/// The engine's SQL access, inside the current transaction, with the privileges of
/// the sink's owner (so a connector cannot do more than the user who created it).
pub struct SpiSession {
    pub owner: pg_sys::Oid,
}

impl SpiSession {
    /// A session that runs as the sink's owner. Fails closed: an owner that
    /// cannot be found is an error, never the superuser.
    pub fn for_owner(owner: &str) -> Result<SpiSession> {
        let oid = select_one("SELECT pg_catalog.to_regrole($1)::oid::text", &[Some(owner)]).and_then(|o| o.parse::<u32>().ok());
        match oid {
            Some(oid) => Ok(SpiSession { owner: pg_sys::Oid::from(oid) }),
            None => Err(SinkError::permanent(format!("the sink's owner role \"{owner}\" does not exist"))
                .hint("Drop the sink, or create it again as an existing role.")),
        }
    }

    fn as_owner<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut uid = pg_sys::Oid::INVALID;
        let mut ctx = 0;
        // SAFETY: save, switch and restore the user id, as SECURITY DEFINER calls do;
        // an error inside aborts the (sub)transaction, which restores it too.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut uid, &mut ctx);
            pg_sys::SetUserIdAndSecContext(self.owner, ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        }
        let r = f();
        // SAFETY: restores the identity saved above.
        unsafe { pg_sys::SetUserIdAndSecContext(uid, ctx) };
        r
    }
}

impl SqlSession for SpiSession {
    fn execute(&mut self, sql: &str, params: &[Option<&str>]) -> Result<u64> {
        self.as_owner(|| Spi::connect_mut(|c| c.update(sql, None, &args(params)).map(|t| t.len() as u64)))
            .map_err(|e| SinkError::permanent(format!("statement failed: {e}")))
    }
    fn query(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows> {
        self.as_owner(|| Spi::connect(|c| c.select(sql, None, &args(params)).and_then(collect)))
            .map_err(|e| SinkError::permanent(format!("query failed: {e}")))
    }

    fn query_latest(&mut self, sql: &str, params: &[Option<&str>], after_xid: u32) -> Result<Rows> {
        if after_xid != 0 {
            // The walsender can send a transaction between its commit record's
            // flush and its end in the proc array: wait until it is visible.
            // SAFETY: a committed top-level xid read from the WAL, never our own.
            unsafe {
                pg_sys::XactLockTableWait(
                    pg_sys::TransactionId::from(after_xid),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    pg_sys::XLTW_Oper::XLTW_None,
                )
            };
        }
        Ok(self.as_owner(|| select_latest(sql, params)))
    }

    fn query_or_none(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Option<Rows>> {
        Ok(in_subtransaction(|| self.as_owner(|| Spi::connect(|c| c.select(sql, None, &args(params)).and_then(collect)).ok())))
    }

    fn execute_guarded(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Result<u64>> {
        let run = || self.as_owner(|| Spi::connect_mut(|c| c.update(sql, None, &args(params)).map(|t| t.len() as u64)));
        Ok(match subtransaction(run) {
            Ok(n) => Ok(n),
            Err(Ok(e)) => Err(SinkError::permanent(format!("statement failed: {e}"))),
            // The target's own ERROR (a constraint, a cast): only this statement is undone.
            Err(Err((code, message, detail))) => Err(SinkError::permanent(format!("the target refused the row: {message}"))
                .detail(format!("{code:?}{}", detail.map(|d| format!("; {d}")).unwrap_or_default()))),
        })
    }
}

/// Run `f` in a subtransaction that is rolled back when it raises (the PL/pgSQL
/// exception-block pattern, restoring memory context and resource owner): `None`
/// then, and the surrounding transaction stays usable.
pub fn in_subtransaction<T>(f: impl FnOnce() -> Option<T>) -> Option<T> {
    subtransaction(|| f().ok_or(())).ok()
}

/// Run `f` in a subtransaction, kept when `f` returns `Ok`, rolled back when it
/// returns `Err` or raises (`Err(Err(report))`, the ERROR's SQLSTATE, message
/// and detail), with the memory context and resource owner restored.
pub fn subtransaction<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<T, Result<E, (PgSqlErrorCode, String, Option<String>)>> {
    // SAFETY: we are inside a transaction; every path below ends the
    // subtransaction it began and restores the saved context and owner.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        // Whatever `f` touched is rolled back with the subtransaction on an ERROR.
        let f = std::panic::AssertUnwindSafe(f);
        let result = pgrx::PgTryBuilder::new(move || {
            let f = f; // the whole wrapper, not its field (UnwindSafe)
            (f.0)().map_err(Ok)
        })
        .catch_others(|cause| {
            let r = match &cause {
                pg_sys::panic::CaughtError::PostgresError(r)
                | pg_sys::panic::CaughtError::ErrorReport(r)
                | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r,
            };
            Err(Err((r.sql_error_code(), r.message().to_string(), r.detail().map(str::to_string))))
        })
        .execute();
        match result {
            Ok(v) => {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
                Ok(v)
            }
            Err(e) => {
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
                Err(e)
            }
        }
    }
}

/// A read-only query under a snapshot taken now, not the transaction's: a step's
/// transaction (or a REPEATABLE READ caller of `sync()`) can hold a snapshot older
/// than the changes it reads. Text parameters; every column comes back as text.
pub fn select_latest(sql: &str, params: &[Option<&str>]) -> Rows {
    let failed = |status: i32| -> ! {
        super::errors::fail(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("pg_sink internal query failed: SPI status {status}"),
            Some(format!("Query: {sql}")),
            None,
        )
    };
    let Ok(cmd) = std::ffi::CString::new(sql) else { failed(pg_sys::SPI_ERROR_ARGUMENT) };
    let texts: Vec<Option<std::ffi::CString>> = params.iter().map(|p| p.map(|v| std::ffi::CString::new(v).unwrap_or_default())).collect();
    // SAFETY: inside a transaction. SPI is connected and finished around the query
    // and the pushed snapshot popped; an ERROR in between aborts the (sub)transaction,
    // whose cleanup does both. Values are copied out before SPI_finish frees them.
    unsafe {
        let mut types: Vec<pg_sys::Oid> = vec![pg_sys::TEXTOID; texts.len()];
        let mut values: Vec<pg_sys::Datum> = texts
            .iter()
            .map(|t| t.as_ref().map_or(pg_sys::Datum::from(0usize), |c| pg_sys::Datum::from(pg_sys::cstring_to_text(c.as_ptr()))))
            .collect();
        let nulls: Vec<std::ffi::c_char> = texts.iter().map(|t| if t.is_some() { b' ' } else { b'n' } as std::ffi::c_char).collect();
        let connected = pg_sys::SPI_connect();
        if connected != pg_sys::SPI_OK_CONNECT as i32 {
            failed(connected);
        }
        pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        let rc = pg_sys::SPI_execute_with_args(cmd.as_ptr(), texts.len() as i32, types.as_mut_ptr(), values.as_mut_ptr(), nulls.as_ptr(), true, 0);
        let mut rows = Vec::new();
        if rc == pg_sys::SPI_OK_SELECT as i32 && !pg_sys::SPI_tuptable.is_null() {
            let table = &*pg_sys::SPI_tuptable;
            let natts = (*table.tupdesc).natts;
            for i in 0..table.numvals as usize {
                let tuple = *table.vals.add(i);
                let row = (1..=natts)
                    .map(|n| {
                        let v = pg_sys::SPI_getvalue(tuple, table.tupdesc, n);
                        (!v.is_null()).then(|| std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
                    })
                    .collect();
                rows.push(row);
            }
        }
        pg_sys::PopActiveSnapshot();
        pg_sys::SPI_finish();
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            failed(rc);
        }
        rows
    }
}

/// Resolves domains, enums, composites and arrays of them from `pg_type`.
#[derive(Default)]
pub struct CatalogTypes {
    cache: HashMap<u32, PgType>,
}

impl CatalogTypes {
    fn lookup(&mut self, oid: u32, depth: u32) -> PgType {
        if let Some(t) = types::builtin(oid) {
            return t;
        }
        if let Some(t) = self.cache.get(&oid) {
            return t.clone();
        }
        let oid_text = oid.to_string();
        let row = select(
            "SELECT typtype::text, typcategory::text, typelem::text, typbasetype::text, typrelid::text, \
                    format_type(oid, NULL) FROM pg_type WHERE oid = $1::oid",
            &[Some(&oid_text)],
        );
        let Some(r) = row.into_iter().next() else {
            return PgType::new(oid, format!("oid {oid}"), TypeKind::Other);
        };
        let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let (typtype, category, elem, base, relid, name) = (get(0), get(1), get(2), get(3), get(4), get(5));
        let num = |s: &str| s.parse::<u32>().unwrap_or(0);
        let kind = if depth > 8 {
            TypeKind::Other
        } else if typtype == "d" {
            self.lookup(num(&base), depth + 1).kind
        } else if typtype == "e" {
            TypeKind::Enum
        } else if typtype == "c" {
            let fields = select(
                "SELECT attname::text, atttypid::text FROM pg_attribute \
                  WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[Some(&relid)],
            );
            TypeKind::Composite(
                fields
                    .into_iter()
                    .map(|f| {
                        let fname = f.first().cloned().flatten().unwrap_or_default();
                        let ftype = num(&f.get(1).cloned().flatten().unwrap_or_default());
                        (fname, self.lookup(ftype, depth + 1))
                    })
                    .collect(),
            )
        } else if category == "A" && num(&elem) != 0 {
            TypeKind::Array(Box::new(self.lookup(num(&elem), depth + 1)))
        } else {
            TypeKind::Other
        };
        let t = PgType::new(oid, name, kind);
        self.cache.insert(oid, t.clone());
        t
    }
}

impl TypeResolver for CatalogTypes {
    fn resolve(&mut self, oid: u32) -> Option<PgType> {
        Some(self.lookup(oid, 0))
    }

    fn relation_meta(&mut self, rel: &Relation) -> Option<RelationMeta> {
        let oid = rel.id.to_string();
        let rows = select(
            "SELECT attname::text, attnotnull::text, col_description(attrelid, attnum) FROM pg_attribute \
              WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped",
            &[Some(&oid)],
        );
        let mut by_name = std::collections::HashMap::new();
        for r in rows {
            let name = r.first().cloned().flatten().unwrap_or_default();
            by_name.insert(name, (r.get(1).cloned().flatten().as_deref() == Some("true"), r.get(2).cloned().flatten()));
        }
        let mut meta = RelationMeta { comment: select_one("SELECT obj_description($1::oid, 'pg_class')", &[Some(&oid)]), ..Default::default() };
        for c in &rel.columns {
            let (nn, comment) = by_name.get(&c.name).cloned().unwrap_or((false, None));
            meta.not_null.push(nn);
            meta.column_comments.push(comment);
            type_docs(&c.ty, &mut meta, 0);
            enum_labels(&c.ty, &mut meta);
        }
        Some(meta)
    }
}

/// The labels of the enum type a column uses (itself or as an array's element).
fn enum_labels(ty: &PgType, meta: &mut RelationMeta) {
    let ty = match &ty.kind {
        TypeKind::Array(e) => e.as_ref(),
        _ => ty,
    };
    if ty.kind != TypeKind::Enum || meta.enum_labels.contains_key(&ty.oid) {
        return;
    }
    let labels = select("SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1::oid ORDER BY enumsortorder", &[Some(&ty.oid.to_string())]);
    meta.enum_labels.insert(ty.oid, labels.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect());
}

/// Comments of the composite types a column uses (for Avro `doc`s).
fn type_docs(ty: &PgType, meta: &mut RelationMeta, depth: usize) {
    if depth > 8 {
        return;
    }
    match &ty.kind {
        TypeKind::Array(e) => type_docs(e, meta, depth + 1),
        TypeKind::Composite(fields) => {
            if meta.type_docs.contains_key(&ty.oid) {
                return;
            }
            let oid = ty.oid.to_string();
            let comment = select_one("SELECT obj_description($1::oid, 'pg_type')", &[Some(&oid)]);
            let fields_doc = select(
                "SELECT a.attname::text, col_description(a.attrelid, a.attnum) FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid \
                  WHERE t.oid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND col_description(a.attrelid, a.attnum) IS NOT NULL",
                &[Some(&oid)],
            )
            .into_iter()
            .filter_map(|r| Some((r.first().cloned().flatten()?, r.get(1).cloned().flatten()?)))
            .collect();
            meta.type_docs.insert(ty.oid, (comment, fields_doc));
            for (_, f) in fields {
                type_docs(f, meta, depth + 1);
            }
        }
        _ => {}
    }
}

/// The text form of a datum, exactly as pgoutput would send it (the type's output
/// function).
pub fn output_text(datum: pg_sys::Datum, type_oid: pg_sys::Oid) -> String {
    let mut func = pg_sys::Oid::INVALID;
    let mut is_varlena = false;
    // SAFETY: valid type OID from the tuple descriptor; the datum belongs to it; the
    // returned C string is palloc'd in the current memory context and copied at once.
    unsafe {
        pg_sys::getTypeOutputInfo(type_oid, &mut func, &mut is_varlena);
        let cstr = pg_sys::OidOutputFunctionCall(func, datum);
        let s = std::ffi::CStr::from_ptr(cstr).to_string_lossy().into_owned();
        pg_sys::pfree(cstr.cast());
        s
    }
}
