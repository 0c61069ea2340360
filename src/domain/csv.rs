//! The small CSV dialect of HAProxy's `show stat`: comma separated, a field
//! that holds a comma or a quote is double-quoted with quotes doubled.

/// Splits one CSV line into fields.
pub fn split_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, '"') if field.is_empty() => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (_, c) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::split_line;

    #[test]
    fn splits_plain_and_quoted_fields() {
        assert_eq!(split_line("a,,b"), ["a", "", "b"]);
        assert_eq!(
            split_line(r#"x,"Layer7 wrong status, code 500","say ""hi""",y"#),
            ["x", "Layer7 wrong status, code 500", r#"say "hi""#, "y"]
        );
        assert_eq!(split_line("trailing,"), ["trailing", ""]);
    }
}
