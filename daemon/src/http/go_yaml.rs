//! How the Go reference's YAML encoder (gopkg.in/yaml.v2 2.4) writes a string
//! scalar, so that `/routes.yaml` reads byte for byte like the reference's.
//!
//! yaml.v2 writes a string plain unless, read back plain, it would be another
//! type (null, bool, int, float, timestamp, or a YAML 1.1 base-60 float): then
//! it is double-quoted (`"2026-12-06 03:34:39"`). A string that YAML's
//! syntax does not allow plain (a leading `{`, `: ` inside, ...) is
//! single-quoted (`'{"IPVersion":4,...}'`).

/// `s` as yaml.v2 writes a string value or map key in block context.
pub fn string(s: &str) -> String {
    if s.chars().any(char::is_control) {
        return double_quoted(s);
    }
    if resolves_to_non_string(s) || is_base60_float(s) {
        double_quoted(s)
    } else if plain_allowed(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn double_quoted(s: &str) -> String {
    // YAML's double-quoted escapes are JSON's for what we write.
    serde_json::to_string(s).expect("a string serializes")
}

/// yaml.v2's `resolve("", s)` is not `!!str`.
fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf",
        "-.Inf", "-.INF", "<<",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    match s.as_bytes()[0] {
        b'.' => s.parse::<f64>().is_ok(),
        b'0'..=b'9' | b'+' | b'-' => {
            let plain = s.replace('_', "");
            is_timestamp(s) || is_go_int(&plain) || is_yaml_float(&plain)
        }
        _ => false,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)` (or `ParseUint`) succeeds, or yaml.v2's
/// own `0b` binary form.
fn is_go_int(s: &str) -> bool {
    let d = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (radix, digits) = if let Some(r) = d.strip_prefix("0x").or(d.strip_prefix("0X")) {
        (16, r)
    } else if let Some(r) = d.strip_prefix("0o").or(d.strip_prefix("0O")) {
        (8, r)
    } else if let Some(r) = d.strip_prefix("0b").or(d.strip_prefix("0B")) {
        (2, r)
    } else if d.len() > 1 && d.starts_with('0') {
        (8, &d[1..])
    } else {
        (10, d)
    };
    !digits.is_empty()
        && !digits.starts_with(['+', '-'])
        && u64::from_str_radix(digits, radix).is_ok()
}

fn digits(s: &[u8]) -> usize {
    s.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`
fn is_yaml_float(s: &str) -> bool {
    let mut b = s.as_bytes();
    if let [b'+' | b'-', rest @ ..] = b {
        b = rest;
    }
    let int = digits(b);
    b = &b[int..];
    if let [b'.', rest @ ..] = b {
        let frac = digits(rest);
        if int == 0 && frac == 0 {
            return false;
        }
        b = &rest[frac..];
    } else if int == 0 {
        return false;
    }
    if let [b'e' | b'E', rest @ ..] = b {
        let rest = rest
            .strip_prefix(b"+")
            .or(rest.strip_prefix(b"-"))
            .unwrap_or(rest);
        let exp = digits(rest);
        return exp > 0 && exp == rest.len();
    }
    b.is_empty()
}

/// yaml.v2's timestamps: `YYYY-M-D`, optionally followed by `T`, `t` or a
/// space and `H:M:S` (and a fraction and zone, not checked).
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if digits(b) != 4 || b.get(4) != Some(&b'-') {
        return false;
    }
    let mut rest = &b[5..];
    for (i, sep) in [b'-', 0].into_iter().enumerate() {
        let n = digits(rest);
        if !(1..=2).contains(&n) {
            return false;
        }
        rest = &rest[n..];
        if i == 0 {
            if rest.first() != Some(&sep) {
                return false;
            }
            rest = &rest[1..];
        }
    }
    match rest {
        [] => true,
        [b'T' | b't' | b' ', time @ ..] => {
            let mut t = time;
            for i in 0..3 {
                let n = digits(t);
                if !(1..=2).contains(&n) {
                    return false;
                }
                t = &t[n..];
                if i < 2 {
                    if t.first() != Some(&b':') {
                        return false;
                    }
                    t = &t[1..];
                }
            }
            true
        }
        _ => false,
    }
}

/// `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$` (quoted by yaml.v2
/// for other YAML 1.1 parsers).
fn is_base60_float(s: &str) -> bool {
    let mut b = s.as_bytes();
    if let [b'+' | b'-', rest @ ..] = b {
        b = rest;
    }
    if !b.first().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    let head = b
        .iter()
        .take_while(|c| c.is_ascii_digit() || **c == b'_')
        .count();
    b = &b[head..];
    let mut groups = 0;
    while let [b':', rest @ ..] = b {
        let n = digits(rest);
        let ok = match n {
            1 => true,
            2 => rest[0] <= b'5',
            _ => false,
        };
        if !ok {
            return false;
        }
        b = &rest[n..];
        groups += 1;
    }
    if groups == 0 {
        return false;
    }
    match b {
        [] => true,
        [b'.', rest @ ..] => rest.iter().all(|c| c.is_ascii_digit() || *c == b'_'),
        _ => false,
    }
}

/// libyaml's plain-scalar analysis in block context (what the emitter checks
/// before it writes a scalar plain).
fn plain_allowed(s: &str) -> bool {
    let b = s.as_bytes();
    let ws_at = |i: usize| b.get(i).is_none_or(|c| *c == b' ' || *c == b'\t');
    if b.first().is_none_or(|c| *c == b' ') || b.last() == Some(&b' ') {
        return false;
    }
    match b[0] {
        b'#' | b',' | b'[' | b']' | b'{' | b'}' | b'&' | b'*' | b'!' | b'|' | b'>' | b'\''
        | b'"' | b'%' | b'@' | b'`' => return false,
        b'?' | b':' | b'-' if ws_at(1) => return false,
        _ => {}
    }
    !b.iter().enumerate().skip(1).any(|(i, c)| match c {
        b':' => ws_at(i + 1),
        b'#' => b[i - 1] == b' ',
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::string;

    #[test]
    fn writes_strings_as_yaml_v2_does() {
        // Every expectation checked with yaml.v2 2.4.0's Marshal.
        for (s, want) in [
            // Seen in the reference's /routes.yaml.
            ("2001:db8::1", "2001:db8::1"),
            ("0.5.0-6-g11ad382", "0.5.0-6-g11ad382"),
            ("2026-12-06 03:34:39", "\"2026-12-06 03:34:39\""),
            (
                r#"{"IPVersion":4,"Prefix":"10.0.23.0/24"}"#,
                r#"'{"IPVersion":4,"Prefix":"10.0.23.0/24"}'"#,
            ),
            // Plain text that would read back as another type.
            ("", "\"\""),
            ("yes", "\"yes\""),
            ("0.1", "\"0.1\""),
            ("1e5", "\"1e5\""),
            ("0x1F", "\"0x1F\""),
            ("1_000", "\"1_000\""),
            ("2026-12-06", "\"2026-12-06\""),
            ("1:2:3:4:5:6:7:8", "\"1:2:3:4:5:6:7:8\""),
            (".5", "\".5\""),
            // Plain is fine.
            ("10.0.0.1", "10.0.0.1"),
            ("::1", "::1"),
            ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
            ("0.1.0", "0.1.0"),
            ("2001:db8::10", "2001:db8::10"),
            ("a:b", "a:b"),
            // Syntax that cannot be plain.
            ("- x", "'- x'"),
            ("a: b", "'a: b'"),
            ("a #b", "'a #b'"),
            ("{it's}", "'{it''s}'"),
            // Flow indicators inside are fine in block context.
            ("it's {", "it's {"),
            ("'", "''''"),
            (" x", "' x'"),
            ("1:2::", "'1:2::'"),
            ("2001:10:20::", "'2001:10:20::'"),
            ("12:30", "\"12:30\""),
            ("1:60", "1:60"),
            ("0b101", "\"0b101\""),
            ("0o17", "\"0o17\""),
            ("-1", "\"-1\""),
            ("+.inf", "\"+.inf\""),
            ("0.1.0-dev+abc", "0.1.0-dev+abc"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:6"),
        ] {
            assert_eq!(string(s), want, "{s:?}");
        }
    }
}
