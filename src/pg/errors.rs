//! Engine errors and our own checks become Postgres errors with a real SQLSTATE,
//! message, detail and hint.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use crate::engine::error::{ErrorKind, SinkError};

pub use pgrx::PgSqlErrorCode as Code;

/// Raise an ERROR. Never returns.
#[track_caller]
pub fn fail(code: PgSqlErrorCode, message: impl Into<String>, detail: Option<String>, hint: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "pg_sink");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) returned")
}

pub fn code_of(e: &SinkError) -> PgSqlErrorCode {
    if e.privilege {
        return PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE;
    }
    match e.kind {
        ErrorKind::InvalidConfig => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::Transient => PgSqlErrorCode::ERRCODE_CONNECTION_EXCEPTION,
        ErrorKind::Permanent => PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
    }
}

/// Raise an engine error as a Postgres ERROR.
#[track_caller]
pub fn raise(e: SinkError) -> ! {
    fail(code_of(&e), e.message.clone(), e.detail.clone(), e.hint.clone())
}

pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, SinkError> {
    #[track_caller]
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(e),
        }
    }
}

impl<T> OrRaise<T> for Result<T, pgrx::spi::Error> {
    #[track_caller]
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => fail(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("SPI failure: {e}"), None, None),
        }
    }
}
