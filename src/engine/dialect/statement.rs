//! Which statement a token list is: the dispatch on its first words (CREATE,
//! ALTER, DROP, SHOW, GRANT/REVOKE) to each dialect's grammar, and the statements
//! that look the same in every dialect: DROP, SHOW, GRANT/REVOKE, secrets.

use super::ast::{Command, Dialect, ObjectKind, ParseError, Statement, Value};
use super::kinetica;
use super::lexer::{Tok, Token};
use super::parser::{stmt, PResult, Parser};

impl Parser<'_> {
    pub fn statement(&mut self) -> PResult<Statement> {
        let first = self.peek().map(|t| t.shown(self.src).to_ascii_uppercase()).unwrap_or_default();
        let stmt = match first.as_str() {
            "CREATE" => self.create()?,
            "ALTER" => self.alter()?,
            "DROP" => self.drop()?,
            "SHOW" => self.show()?,
            "GRANT" | "REVOKE" => self.grant()?,
            "EXPORT" => self.kinetica_export()?,
            _ => {
                return Err(self
                    .unexpected(&["CREATE", "ALTER", "DROP", "SHOW", "GRANT", "REVOKE", "EXPORT"])
                    .hint("pg_sink understands the sink DDL of Materialize, RisingWave and Kinetica."))
            }
        };
        self.expect_end()?;
        Ok(stmt)
    }

    fn create(&mut self) -> PResult<Statement> {
        self.expect_kw("CREATE")?;
        let or_replace = self.eat_kws(&["OR", "REPLACE"]);
        if self.peek_kw("SINK") {
            if or_replace {
                return Err(self.replace_unsupported("SINK"));
            }
            self.pos += 1;
            let if_not_exists = self.eat_kws(&["IF", "NOT", "EXISTS"]);
            let name = self.object_name("a sink name")?;
            // Materialize: [IN CLUSTER c] FROM item INTO ..; RisingWave: FROM t WITH .. | AS select.
            if self.peek_kw("IN") || (self.peek_kw("FROM") && self.into_follows()) {
                return self.materialize_sink(name, if_not_exists);
            }
            return self.risingwave_sink(name, if_not_exists);
        }
        if self.peek_kw("SECRET") {
            self.pos += 1;
            let if_not_exists = self.eat_kws(&["IF", "NOT", "EXISTS"]);
            let name = self.object_name("a secret name")?;
            let mut dialect = Dialect::Materialize;
            if self.peek_kw("WITH") {
                // RisingWave: WITH (backend = 'meta') AS 'value'.
                self.pos += 1;
                let opts = self.assignment_list()?;
                for (k, v, at) in opts {
                    let ok = k == "backend" && v == Value::Text("meta".into());
                    if !ok {
                        return Err(ParseError::at(self.src, at, format!("unsupported secret option \"{k}\""), &["backend = 'meta'"])
                            .unsupported("pg_sink keeps secrets in its catalog (RisingWave's meta backend)."));
                    }
                }
                dialect = Dialect::RisingWave;
            }
            self.expect_kw("AS")?;
            let value = self.string("the secret's value as a string")?;
            return Ok(stmt(dialect, "CREATE SECRET", Command::CreateSecret { name, value, if_not_exists, or_replace }));
        }
        if self.peek_kw("CONNECTION") {
            if or_replace {
                return Err(self.replace_unsupported("CONNECTION"));
            }
            self.pos += 1;
            let if_not_exists = self.eat_kws(&["IF", "NOT", "EXISTS"]);
            let name = self.object_name("a connection name")?;
            if self.peek_kw("WITH") {
                return self.risingwave_connection(name, if_not_exists);
            }
            return self.materialize_connection(name, if_not_exists);
        }
        if self.peek_kws(&["DATA", "SINK"]) {
            self.pos += 2;
            return self.kinetica_data_sink(or_replace);
        }
        if self.peek_kw("CREDENTIAL") {
            self.pos += 1;
            return self.kinetica_credential(or_replace);
        }
        if self.peek_kw("STREAM") {
            self.pos += 1;
            return self.kinetica_stream(or_replace);
        }
        Err(self.unexpected(&["SINK", "CONNECTION", "SECRET", "DATA SINK", "CREDENTIAL", "STREAM"]))
    }

    pub fn peek_kws(&self, kws: &[&str]) -> bool {
        kws.iter().enumerate().all(|(i, k)| self.peek_kw_at(i, k))
    }

    /// After `FROM`: does a name then `INTO` follow (Materialize) rather than `WITH`?
    fn into_follows(&self) -> bool {
        let mut i = 1;
        loop {
            match self.peek_at(i) {
                Some(Token { tok: Tok::Word { .. }, .. }) if Self::is_kw(self.peek_at(i), "INTO") => return true,
                Some(Token { tok: Tok::Word { .. }, .. }) => i += 1,
                Some(Token { tok: Tok::Punct(p), .. }) if p == "." => i += 1,
                _ => return false,
            }
        }
    }

    fn replace_unsupported(&self, what: &str) -> ParseError {
        ParseError::at(self.src, self.offset(), format!("CREATE OR REPLACE {what} is not supported"), &[])
            .unsupported(format!("Drop the {} first, then create it again.", what.to_lowercase()))
    }

    fn alter(&mut self) -> PResult<Statement> {
        self.expect_kw("ALTER")?;
        if self.eat_kw("SECRET") {
            let if_exists = self.eat_kws(&["IF", "EXISTS"]);
            let name = self.object_name("a secret name")?;
            self.expect_kw("AS")?;
            let value = self.string("the secret's value as a string")?;
            return Ok(stmt(Dialect::Materialize, "ALTER SECRET", Command::AlterSecret { name, value, if_exists }));
        }
        if self.eat_kw("CONNECTION") {
            let name = self.object_name("a connection name")?;
            self.expect_kw("SET")?;
            let set = self.materialize_options(&[])?;
            return Ok(stmt(Dialect::Materialize, "ALTER CONNECTION", Command::AlterConnection { name, set }));
        }
        if self.eat_kws(&["DATA", "SINK"]) {
            let name = self.object_name("a data sink name")?;
            let set = self.set_property()?;
            let set = kinetica::data_sink_options(self.src, set)?;
            return Ok(stmt(Dialect::Kinetica, "ALTER DATA SINK", Command::AlterConnection { name, set }));
        }
        if self.eat_kw("CREDENTIAL") {
            let name = self.object_name("a credential name")?;
            let set = self.set_property()?.into_iter().map(|(k, v, _)| (k, v)).collect();
            return Ok(stmt(Dialect::Kinetica, "ALTER CREDENTIAL", Command::AlterCredential { name, set }));
        }
        Err(self.unexpected(&["SECRET", "CONNECTION", "DATA SINK", "CREDENTIAL"]))
    }

    /// Kinetica's `SET PROPERTY name = 'value' [, ...]`.
    fn set_property(&mut self) -> PResult<Vec<(String, Value, usize)>> {
        self.expect_kws(&["SET", "PROPERTY"])?;
        let mut out = Vec::new();
        loop {
            let at = self.offset();
            let name = self.option_name()?;
            self.expect_punct("=")?;
            out.push((name, self.value()?, at));
            if !self.eat_punct(",") {
                return Ok(out);
            }
        }
    }

    fn drop(&mut self) -> PResult<Statement> {
        self.expect_kw("DROP")?;
        let (kind, dialect, tag) = if self.eat_kw("SINK") {
            (ObjectKind::Sink, Dialect::Materialize, "DROP SINK")
        } else if self.eat_kw("CONNECTION") {
            (ObjectKind::Connection, Dialect::Materialize, "DROP CONNECTION")
        } else if self.eat_kw("SECRET") {
            (ObjectKind::Secret, Dialect::Materialize, "DROP SECRET")
        } else if self.eat_kws(&["DATA", "SINK"]) {
            (ObjectKind::Connection, Dialect::Kinetica, "DROP DATA SINK")
        } else if self.eat_kw("STREAM") {
            (ObjectKind::Sink, Dialect::Kinetica, "DROP STREAM")
        } else if self.eat_kw("CREDENTIAL") {
            (ObjectKind::Credential, Dialect::Kinetica, "DROP CREDENTIAL")
        } else {
            return Err(self.unexpected(&["SINK", "CONNECTION", "SECRET", "DATA SINK", "STREAM", "CREDENTIAL"]));
        };
        let if_exists = self.eat_kws(&["IF", "EXISTS"]);
        let name = self.object_name(&format!("a {} name", kind.as_str()))?;
        let cascade = if self.eat_kw("CASCADE") {
            true
        } else {
            self.eat_kw("RESTRICT");
            false
        };
        // A sink has no dependents: RisingWave's DROP SINK .. CASCADE is plain DROP SINK.
        if cascade && !matches!(kind, ObjectKind::Connection | ObjectKind::Sink) {
            return Err(ParseError::at(self.src, self.toks[self.pos - 1].start, format!("{tag} .. CASCADE is not supported"), &[])
                .unsupported("Drop the objects that depend on it first."));
        }
        Ok(stmt(dialect, tag, Command::Drop { kind, name, if_exists, cascade }))
    }

    fn show(&mut self) -> PResult<Statement> {
        self.expect_kw("SHOW")?;
        let (kind, dialect, tag, named) = if self.eat_kw("SINKS") {
            (Some(ObjectKind::Sink), Dialect::Materialize, "SHOW SINKS", false)
        } else if self.eat_kw("CONNECTIONS") {
            (Some(ObjectKind::Connection), Dialect::Materialize, "SHOW CONNECTIONS", false)
        } else if self.eat_kw("SECRETS") {
            (Some(ObjectKind::Secret), Dialect::Materialize, "SHOW SECRETS", false)
        } else if self.eat_kw("OBJECTS") {
            (None, Dialect::Materialize, "SHOW OBJECTS", false)
        } else if self.eat_kws(&["DATA", "SINKS"]) {
            (Some(ObjectKind::Connection), Dialect::Kinetica, "SHOW DATA SINK", false)
        } else if self.eat_kws(&["DATA", "SINK"]) {
            (Some(ObjectKind::Connection), Dialect::Kinetica, "SHOW DATA SINK", true)
        } else if self.eat_kw("CREDENTIALS") {
            (Some(ObjectKind::Credential), Dialect::Kinetica, "SHOW CREDENTIAL", false)
        } else if self.eat_kw("CREDENTIAL") {
            (Some(ObjectKind::Credential), Dialect::Kinetica, "SHOW CREDENTIAL", true)
        } else if self.eat_kw("STREAMS") {
            (Some(ObjectKind::Sink), Dialect::Kinetica, "SHOW STREAM", false)
        } else if self.eat_kw("STREAM") {
            (Some(ObjectKind::Sink), Dialect::Kinetica, "SHOW STREAM", true)
        } else {
            return Err(self.unexpected(&["SINKS", "CONNECTIONS", "SECRETS", "OBJECTS", "DATA SINK", "CREDENTIAL", "STREAM"]));
        };
        let name = if named {
            if self.eat_punct("*") {
                None
            } else {
                Some(self.object_name("a name or *")?)
            }
        } else {
            None
        };
        Ok(stmt(dialect, tag, Command::Show { kind, name }))
    }

    fn grant(&mut self) -> PResult<Statement> {
        let revoke = self.eat_kw("REVOKE");
        if !revoke {
            self.expect_kw("GRANT")?;
        }
        let verb = if revoke { "REVOKE" } else { "GRANT" };
        let (kind, dialect) = if self.eat_kws(&["USAGE", "ON"]) {
            let kind = if self.eat_kw("CONNECTION") {
                ObjectKind::Connection
            } else if self.eat_kw("SECRET") {
                ObjectKind::Secret
            } else if self.eat_kw("CREDENTIAL") {
                ObjectKind::Credential
            } else {
                return Err(self.unexpected(&["CONNECTION", "SECRET", "CREDENTIAL"]));
            };
            (kind, Dialect::Materialize)
        } else if self.eat_kws(&["CONNECT", "ON"]) {
            self.eat_kws(&["DATA", "SINK"]);
            (ObjectKind::Connection, Dialect::Kinetica)
        } else {
            return Err(self
                .unexpected(&["USAGE ON", "CONNECT ON"])
                .hint("Sinks are used through their connections: grant USAGE ON CONNECTION (or Kinetica's CONNECT ON DATA SINK)."));
        };
        let name = self.object_name(&format!("a {} name", kind.as_str()))?;
        self.expect_kw(if revoke { "FROM" } else { "TO" })?;
        let mut roles = Vec::new();
        loop {
            roles.push(self.ident("a role name")?);
            if !self.eat_punct(",") {
                break;
            }
        }
        Ok(stmt(dialect, verb, Command::Grant { revoke, kind, name, roles }))
    }
}
