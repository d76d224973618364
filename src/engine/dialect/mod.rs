//! The DDL of other systems, so a statement pasted from their docs works here:
//! Materialize's `CREATE SINK .. INTO KAFKA CONNECTION`, `CREATE CONNECTION`,
//! `CREATE SECRET`; RisingWave's `CREATE SINK .. WITH (connector = ..) FORMAT ..
//! ENCODE ..`; Kinetica's `CREATE DATA SINK`, `CREATE CREDENTIAL`, `CREATE STREAM`;
//! plus `DROP`, `ALTER`, `SHOW`, `GRANT`/`REVOKE`.
//!
//! This module owns the text → [`Statement`] step only: tokens, grammar, and the
//! mapping of each dialect's words onto the function API's option names. Running
//! the commands (privileges, catalog, validation) is the glue's job, through the
//! same code paths as `sink.create_sink()` and friends. Syntax errors carry the
//! offending token's position and what was expected there.
//!
//! [`ast`] holds the statements and errors, [`lexer`] the tokens, [`parser`] the
//! grammar toolkit, [`statement`] the dispatch on a statement's first words, and
//! one file per dialect its own statements.

mod ast;
mod kinetica;
mod lexer;
mod materialize;
mod parser;
mod risingwave;
mod statement;

use parser::Parser;

pub use ast::{Command, Dialect, ErrorKind, ObjectKind, Options, ParseError, Statement, Value};
pub use kinetica::connector_for as connector_for_location;
pub use lexer::qualify_hash_functions;

/// Parse every `;`-separated statement of `src`.
pub fn parse(src: &str) -> Result<Vec<Statement>, ParseError> {
    let tokens = lexer::tokenize(src)?;
    let mut out = Vec::new();
    let mut start = 0;
    for (i, t) in tokens
        .iter()
        .enumerate()
        .chain(std::iter::once((tokens.len(), &lexer::Token { tok: lexer::Tok::Punct(";".into()), start: src.len(), end: src.len() })))
    {
        if t.tok == lexer::Tok::Punct(";".into()) {
            if i > start {
                let mut p = Parser::new(src, &tokens[start..i]);
                out.push(p.statement()?);
            }
            start = i + 1;
        }
    }
    if out.is_empty() {
        return Err(ParseError::at(src, src.len(), "empty statement", &["CREATE", "ALTER", "DROP", "SHOW", "GRANT", "REVOKE"])
            .hint("Pass one or more statements, e.g. CREATE SINK .. ; separated by semicolons."));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
