//! A tiny text table: a header row and left-aligned, padded columns separated
//! by two spaces; no trailing whitespace. Also `key: value` lists and human
//! formatting of durations and byte counts.

use std::fmt::Write as _;

/// A table of text cells with a header row.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: AsRef<str>>(header: &[S]) -> Self {
        Table {
            header: header.iter().map(|h| h.as_ref().to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The rendered table, each line ending in `\n`.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < n {
                    let pad = widths[i] - width(cell) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The rendered table with `header` and one row per item, the cells
/// `cells()` makes of it.
pub fn table_of<T>(header: &[&str], items: &[T], cells: impl FnMut(&T) -> Vec<String>) -> String {
    let mut t = Table::new(header);
    for row in items.iter().map(cells) {
        t.row(row);
    }
    t.render()
}

/// Display width of a cell: characters (control output is ASCII in practice).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// Pairs `keys` with `values`, for [`key_values`]: the key lists are the
/// output contract's (`crate::contract::keys`), the values the renderer's.
/// Panics if the counts differ (a renderer out of step with the contract).
pub fn labelled<'a>(keys: &[&'a str], values: Vec<String>) -> Vec<(&'a str, String)> {
    assert_eq!(keys.len(), values.len(), "keys and values of {keys:?}");
    keys.iter().copied().zip(values).collect()
}

/// `key: value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let line = format!("{k}:{}{v}", " ".repeat(w - width(k) + 1));
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// A duration in seconds, short: `45s`, `3m07s`, `2h05m`, `3d04h`; `-` for none.
pub fn human_duration(secs: Option<u64>) -> String {
    let Some(s) = secs else {
        return "-".into();
    };
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A byte count, short: `512B`, `16KiB`, `1.5MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 && v.fract() >= 0.05 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

/// Joins at most `max` items with `,` and says how many more there are:
/// `100,200,300,+2`; `-` for none.
pub fn short_list<T: ToString>(items: &[T], max: usize) -> String {
    if items.is_empty() {
        return "-".into();
    }
    let mut parts: Vec<String> = items.iter().take(max).map(ToString::to_string).collect();
    if items.len() > max {
        parts.push(format!("+{}", items.len() - max));
    }
    parts.join(",")
}

/// `-` for an empty string, else the string.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_and_lines_trimmed() {
        let mut t = Table::new(&["VNI", "PREFIX", "NEXT HOP"]);
        t.row(vec![
            "100".into(),
            "10.0.1.0/24".into(),
            "2001:db8::1".into(),
        ]);
        t.row(vec!["7".into(), "2001:db8:42::/48".into(), "::1".into()]);
        t.row(vec!["16777215".into(), "".into(), "".into()]);
        let out = t.render();
        assert_eq!(
            out,
            "VNI       PREFIX            NEXT HOP\n\
             100       10.0.1.0/24       2001:db8::1\n\
             7         2001:db8:42::/48  ::1\n\
             16777215\n"
        );
        // Every column starts at the same offset in every line.
        let lines: Vec<&str> = out.lines().collect();
        let col = lines[0].find("NEXT HOP").unwrap();
        assert_eq!(&lines[1][col..], "2001:db8::1");
        assert_eq!(&lines[2][col..], "::1");
        assert!(lines.iter().all(|l| l.trim_end() == *l));
    }

    #[test]
    fn header_only_and_short_rows() {
        let t = Table::new(&["A", "B"]);
        assert_eq!(t.render(), "A  B\n");
        let mut t = Table::new(&["A", "LONG HEADER", "C"]);
        t.row(vec!["x".into()]);
        t.row(vec!["1".into(), "2".into(), "3".into(), "dropped".into()]);
        assert_eq!(t.render(), "A  LONG HEADER  C\nx\n1  2            3\n");
    }

    #[test]
    fn key_value_alignment() {
        let out = key_values(&[
            ("id", "7".into()),
            ("remote_address", "[::1]:1".into()),
            ("e", "".into()),
        ]);
        assert_eq!(out, "id:             7\nremote_address: [::1]:1\ne:\n");
    }

    #[test]
    fn humans() {
        assert_eq!(human_duration(None), "-");
        assert_eq!(human_duration(Some(0)), "0s");
        assert_eq!(human_duration(Some(59)), "59s");
        assert_eq!(human_duration(Some(187)), "3m07s");
        assert_eq!(human_duration(Some(7500)), "2h05m");
        assert_eq!(human_duration(Some(3 * 86_400 + 4 * 3600 + 5)), "3d04h");
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1024), "1KiB");
        assert_eq!(human_bytes(16 * 1024), "16KiB");
        assert_eq!(human_bytes(1536 * 1024), "1.5MiB");
        assert_eq!(human_bytes(1 << 30), "1GiB");
        assert_eq!(short_list::<u32>(&[], 3), "-");
        assert_eq!(short_list(&[1, 2], 3), "1,2");
        assert_eq!(short_list(&[1, 2, 3, 4, 5], 3), "1,2,3,+2");
        assert_eq!(or_dash(""), "-");
        assert_eq!(or_dash("x"), "x");
    }
}
