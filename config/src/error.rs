//! Configuration errors and source positions.

use std::fmt;
use std::path::{Path, PathBuf};

/// A rejected configuration file: where and why.
///
/// Displays as one line, `FILE:LINE:COL: message` (line and column count
/// from 1; the column counts characters), or `FILE: message` when the problem
/// has no position (the file cannot be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given.
    pub path: PathBuf,
    /// Line and column (both from 1) of the offending key or value, if any.
    pub location: Option<(usize, usize)>,
    /// What is wrong, naming the key and the value; one line.
    pub message: String,
}

impl ConfigError {
    /// An error at byte `offset` of `text`, the contents of `path`.
    pub fn at(path: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            location: Some(line_col(text, offset)),
            message: one_line(message.into()),
        }
    }

    /// An error about the file as a whole (no position).
    pub fn whole_file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            location: None,
            message: one_line(message.into()),
        }
    }

    /// The line (from 1), if the error has a position.
    pub fn line(&self) -> Option<usize> {
        self.location.map(|(line, _)| line)
    }

    /// The column (from 1, in characters), if the error has a position.
    pub fn column(&self) -> Option<usize> {
        self.location.map(|(_, col)| col)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Line and column, both counted from 1, of byte `offset` in `text` (the
/// column counts characters, so a tab or a non-ASCII character is one
/// column). An offset past the end means the end; one inside a multi-byte
/// character means that character.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Folds a message onto one line (toml's messages may span several).
fn one_line(message: String) -> String {
    if !message.contains('\n') {
        return message;
    }
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every error of a configuration file, in file order. Displays as one
/// `FILE:LINE:COL: message` line per error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Adds `errors` and keeps the whole list in file order (errors without
    /// a position first).
    pub fn extend(&mut self, errors: impl IntoIterator<Item = ConfigError>) {
        self.0.extend(errors);
        self.0.sort_by_key(|e| e.location);
    }

    /// True if there is no error.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl From<Vec<ConfigError>> for ConfigErrors {
    fn from(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|e| e.location);
        ConfigErrors(errors)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
