//! Where output goes: stdout in the chosen format, flushed after every write
//! so that `watch` lines appear at once.

use std::io::Write;

use serde::Serialize;

use crate::cli::Output;
use crate::error::CliError;

/// Writes documents and text in one output format.
pub struct Printer {
    out: Box<dyn Write>,
    format: Output,
}

impl Printer {
    /// A printer to `out` in `format`.
    pub fn new(out: Box<dyn Write>, format: Output) -> Self {
        Printer { out, format }
    }

    /// Writes text as it is.
    pub fn text(&mut self, s: &str) -> Result<(), CliError> {
        self.out
            .write_all(s.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(CliError::Output)
    }

    /// Writes a value as one JSON document (pretty) or one line (`compact`).
    pub fn json<T: Serialize>(&mut self, v: &T, compact: bool) -> Result<(), CliError> {
        let mut s = if compact {
            serde_json::to_string(v)
        } else {
            serde_json::to_string_pretty(v)
        }
        .map_err(|e| CliError::Other(format!("cannot encode JSON: {e}")))?;
        s.push('\n');
        self.text(&s)
    }

    /// The answer of a command: the JSON document in JSON mode, else the
    /// text `table()` makes of it.
    pub fn emit<T: Serialize>(
        &mut self,
        v: &T,
        table: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        self.json_or_text(v, false, table)
    }

    /// One event of a stream: a compact JSON line in JSON mode, else the
    /// line `line()` makes of it.
    pub fn event<T: Serialize>(
        &mut self,
        v: &T,
        line: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        self.json_or_text(v, true, line)
    }

    /// `v` as JSON (one line if `compact`) in JSON mode, else the text
    /// `text_of()` makes of it.
    fn json_or_text<T: Serialize>(
        &mut self,
        v: &T,
        compact: bool,
        text_of: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        match self.format {
            Output::Json => self.json(v, compact),
            Output::Table => self.text(&text_of(v)),
        }
    }
}
