//! Engine errors. Every error carries a [`ErrorKind`] that decides what the worker
//! does with it: transient errors are retried with backoff, permanent ones stop the
//! sink and are recorded in its status, invalid-configuration errors are raised to
//! the user at `create`/`alter` time.

use thiserror::Error;

/// The message of the error a step ends with when the worker is told to stop
/// (pause, drop, shutdown).
pub const STOPPING: &str = "pg_sink worker is stopping";

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Network hiccup, target down, throttled: back off and try the same batch again.
    Transient,
    /// The batch can never succeed as is (record too large, type the target refuses,
    /// update on an append-only sink): stop the sink and record why.
    Permanent,
    /// The user asked for something invalid; reported at definition time.
    InvalidConfig,
}

/// An engine error: a kind, a Postgres-style message, and optional detail and hint.
#[derive(Debug, Clone, Error)]
#[error("{message}")]
pub struct SinkError {
    pub kind: ErrorKind,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// Refused for want of a privilege (SQLSTATE 42501), whatever the kind.
    pub privilege: bool,
    /// The records of the batch (indices into `Batch::records`) the target
    /// refused for good, when it says which: with `errors.policy` other than
    /// `fail` they become dead letters and the rest is delivered again. A
    /// connector that names them promises the failed attempt left nothing at
    /// the target that a second delivery would repeat.
    pub refused: Vec<usize>,
}

impl SinkError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SinkError { kind, message: message.into(), detail: None, hint: None, privilege: false, refused: Vec::new() }
    }
    pub fn privilege(mut self) -> Self {
        self.privilege = true;
        self
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// The target refused these records (see [`SinkError::refused`]).
    pub fn refusing(mut self, records: impl IntoIterator<Item = usize>) -> Self {
        self.refused.extend(records);
        self
    }
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
    /// One line for the status view: message, then detail if any.
    pub fn summary(&self) -> String {
        match &self.detail {
            Some(d) => format!("{}: {}", self.message, d),
            None => self.message.clone(),
        }
    }
}

pub type Result<T, E = SinkError> = std::result::Result<T, E>;
