//! Command-line errors as one line, for both programs (metalbondd, mbctl).

/// The message of a rendered command-line parser error (clap's), as one
/// line: its first paragraph with the lines joined, without the `error: `
/// prefix, the usage and the tips that follow it.
pub fn one_line(rendered: &str) -> String {
    let paragraph: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = paragraph.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn the_first_paragraph_on_one_line_without_usage_or_tips() {
        let unexpected = "error: unexpected argument '--bogus' found\n\n  tip: to pass '--bogus' as a value, use '-- --bogus'\n\nUsage: mbctl [OPTIONS] <COMMAND>\n\nFor more information, try '--help'.\n";
        assert_eq!(one_line(unexpected), "unexpected argument '--bogus' found");
        let missing = "error: the following required arguments were not provided:\n  --server <HOST:PORT>\n\nUsage: metalbondd client --server <HOST:PORT>\n";
        assert_eq!(
            one_line(missing),
            "the following required arguments were not provided: --server <HOST:PORT>"
        );
    }
}
