//! INF file syntax: sections, `key = value, value` entries, `;` comments, quoted strings,
//! `\` line continuations and `%string%` substitution from `[Strings]`.
//!
//! Section names, keys and string-token names are case-insensitive, as Windows' setupapi
//! treats them. Sections that appear more than once are merged, as setupapi does. Syntax
//! problems are collected (with line numbers) rather than aborting, so that the checker can
//! report them next to every other finding.

/// One `key = values` or `values` line of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number where the (possibly continued) line starts.
    pub line: usize,
    /// The key left of the first unquoted `=`, unquoted and trimmed; `None` for plain lines.
    pub key: Option<String>,
    /// Comma-separated fields, unquoted and trimmed (empty fields kept as `""`).
    pub values: Vec<String>,
}

impl Entry {
    /// Whether the key equals `key` case-insensitively.
    #[must_use]
    pub fn key_is(&self, key: &str) -> bool {
        self.key
            .as_deref()
            .is_some_and(|own| own.eq_ignore_ascii_case(key))
    }

    /// Field `index`, or `""` when absent.
    #[must_use]
    pub fn value(&self, index: usize) -> &str {
        self.values.get(index).map_or("", String::as_str)
    }
}

/// A section: `[name]` and its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name as first written.
    pub name: String,
    /// Line of the first header.
    pub line: usize,
    /// Entries in order (from every header with this name).
    pub entries: Vec<Entry>,
}

impl Section {
    /// Entries whose key is `key` (case-insensitive).
    pub fn entries_with_key<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |entry| entry.key_is(key))
    }

    /// First field of the first entry with key `key`.
    #[must_use]
    pub fn first_value(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|entry| entry.key_is(key))
            .map(|entry| entry.value(0))
    }
}

/// A parsed INF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inf {
    /// Sections in order of first appearance.
    pub sections: Vec<Section>,
    /// Syntax problems, each with its line number.
    pub syntax_errors: Vec<String>,
    /// Number of physical lines.
    pub line_count: usize,
}

/// A `%token%` that `[Strings]` does not define.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndefinedString(pub String);

impl Inf {
    /// The section called `name` (case-insensitive).
    #[must_use]
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|section| section.name.eq_ignore_ascii_case(name))
    }

    /// The `[Strings]` value of `token` (case-insensitive).
    #[must_use]
    pub fn string(&self, token: &str) -> Option<&str> {
        self.section("Strings")?
            .entries
            .iter()
            .find(|entry| entry.key_is(token))
            .map(|entry| entry.value(0))
    }

    /// Substitutes `%token%` from `[Strings]`; `%%` is a literal `%`. Numeric tokens that are
    /// not defined strings (`%12%`) are directory ids and stay as written.
    ///
    /// # Errors
    /// The first token that is neither defined nor numeric (an unterminated `%` is reported
    /// as the rest of the text).
    pub fn expand(&self, text: &str) -> Result<String, UndefinedString> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                return Err(UndefinedString(after.to_owned()));
            };
            let token = &after[..end];
            if token.is_empty() {
                out.push('%');
            } else if let Some(value) = self.string(token) {
                out.push_str(value);
            } else if token.bytes().all(|b| b.is_ascii_digit()) {
                out.push('%');
                out.push_str(token);
                out.push('%');
            } else {
                return Err(UndefinedString(token.to_owned()));
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Splits `line` at the first `;` outside double quotes, returning the code part.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (index, ch) in line.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            ';' if !quoted => return &line[..index],
            _ => {}
        }
    }
    line
}

/// Splits at unquoted `separator` characters.
fn split_unquoted(text: &str, separator: char, limit: Option<usize>) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (index, ch) in text.char_indices() {
        if ch == '"' {
            quoted = !quoted;
        } else if ch == separator && !quoted && limit.is_none_or(|max| parts.len() + 1 < max) {
            parts.push(&text[start..index]);
            start = index + ch.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Removes quotes from one field (`""` inside quotes is a literal quote) and trims the
/// unquoted whitespace around it. Returns `None` for an unterminated quote.
fn unquote(field: &str) -> Option<String> {
    let field = field.trim();
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    let mut quoted = false;
    while let Some(ch) = chars.next() {
        if ch == '"' {
            if quoted && chars.peek() == Some(&'"') {
                out.push('"');
                chars.next();
            } else {
                quoted = !quoted;
            }
        } else {
            out.push(ch);
        }
    }
    (!quoted).then_some(out)
}

/// Parses INF text (already decoded to a `str`).
#[must_use]
pub fn parse(text: &str) -> Inf {
    let mut inf = Inf::default();
    let mut current: Option<usize> = None;
    let mut pending = String::new();
    let mut pending_line = 0;
    let physical: Vec<&str> = text.lines().collect();
    inf.line_count = physical.len();
    for (index, raw) in physical.iter().enumerate() {
        let number = index + 1;
        let code = strip_comment(raw).trim_end();
        if pending.is_empty() {
            pending_line = number;
        }
        if let Some(continued) = code.strip_suffix('\\') {
            pending.push_str(continued);
            if number < physical.len() {
                continue;
            }
        } else {
            pending.push_str(code);
        }
        let logical = std::mem::take(&mut pending);
        let logical = logical.trim();
        if logical.is_empty() {
            continue;
        }
        if let Some(header) = logical.strip_prefix('[') {
            let Some(name) = header.strip_suffix(']') else {
                inf.syntax_errors.push(format!(
                    "line {pending_line}: section header {logical} has no closing ]"
                ));
                current = None;
                continue;
            };
            let name = name.trim();
            current = Some(
                if let Some(existing) = inf
                    .sections
                    .iter()
                    .position(|section| section.name.eq_ignore_ascii_case(name))
                {
                    existing
                } else {
                    inf.sections.push(Section {
                        name: name.to_owned(),
                        line: pending_line,
                        entries: Vec::new(),
                    });
                    inf.sections.len() - 1
                },
            );
            continue;
        }
        let Some(section) = current else {
            inf.syntax_errors.push(format!(
                "line {pending_line}: {logical} is outside any section"
            ));
            continue;
        };
        match parse_entry(logical, pending_line) {
            Ok(entry) => inf.sections[section].entries.push(entry),
            Err(message) => inf.syntax_errors.push(message),
        }
    }
    inf
}

fn parse_entry(logical: &str, line: usize) -> Result<Entry, String> {
    let unterminated = || format!("line {line}: unterminated quoted string in {logical}");
    let halves = split_unquoted(logical, '=', Some(2));
    let (key, values_text) = match halves.as_slice() {
        [key, values] => (Some(unquote(key).ok_or_else(unterminated)?), *values),
        _ => (None, logical),
    };
    if key.as_deref() == Some("") {
        return Err(format!("line {line}: entry {logical} has an empty key"));
    }
    let values = split_unquoted(values_text, ',', None)
        .into_iter()
        .map(|field| unquote(field).ok_or_else(unterminated))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Entry { line, key, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_entries_comments_and_quotes() {
        let inf = parse(
            "; leading comment\n\
             [Version]\n\
             Signature = \"$WINDOWS NT$\" ; trailing comment\n\
             \n\
             [Files]\n\
             a.sys , , \"x;y, z\"\n\
             [strings]\n\
             Quote = \"say \"\"hi\"\"\"\n",
        );
        assert!(inf.syntax_errors.is_empty(), "{:?}", inf.syntax_errors);
        assert_eq!(inf.sections.len(), 3);
        let version = inf.section("VERSION").unwrap();
        assert_eq!(version.first_value("signature"), Some("$WINDOWS NT$"));
        let files = inf.section("files").unwrap();
        assert_eq!(files.entries[0].key, None);
        assert_eq!(files.entries[0].values, ["a.sys", "", "x;y, z"]);
        assert_eq!(files.entries[0].line, 6);
        assert_eq!(inf.string("QUOTE"), Some("say \"hi\""));
    }

    #[test]
    fn continuation_joins_lines_and_keeps_first_line_number() {
        let inf = parse("[S]\nKey = one, \\\n      two ; c\nOther = %12%\\file.sys\n");
        assert!(inf.syntax_errors.is_empty(), "{:?}", inf.syntax_errors);
        let section = inf.section("S").unwrap();
        assert_eq!(section.entries[0].values, ["one", "two"]);
        assert_eq!(section.entries[0].line, 2);
        assert_eq!(section.entries[1].values, ["%12%\\file.sys"]);
        assert_eq!(section.entries[1].line, 4);
    }

    #[test]
    fn repeated_sections_merge() {
        let inf = parse("[A]\nx=1\n[B]\n[a]\ny=2\n");
        assert_eq!(inf.sections.len(), 2);
        let a = inf.section("A").unwrap();
        assert_eq!(a.entries.len(), 2);
        assert_eq!(a.first_value("Y"), Some("2"));
    }

    #[test]
    fn equals_inside_quotes_is_not_a_key_separator() {
        let inf = parse("[S]\n\"a=b\"\nk = \"c=d\", e\n");
        let section = inf.section("S").unwrap();
        assert_eq!(section.entries[0].key, None);
        assert_eq!(section.entries[0].values, ["a=b"]);
        assert_eq!(section.entries[1].key.as_deref(), Some("k"));
        assert_eq!(section.entries[1].values, ["c=d", "e"]);
    }

    #[test]
    fn syntax_errors_carry_line_numbers() {
        let inf = parse("orphan=1\n[Good]\nk = \"open\n[Bad\n= v\n");
        assert_eq!(
            inf.syntax_errors,
            [
                "line 1: orphan=1 is outside any section",
                "line 3: unterminated quoted string in k = \"open",
                "line 4: section header [Bad has no closing ]",
                "line 5: = v is outside any section",
            ]
        );
    }

    #[test]
    fn empty_key_is_a_syntax_error() {
        let inf = parse("[S]\n = v\n");
        assert_eq!(inf.syntax_errors, ["line 2: entry = v has an empty key"]);
    }

    #[test]
    fn string_substitution() {
        let inf = parse("[Strings]\nName = \"hive track\"\nPct = 50%%\n");
        assert_eq!(inf.expand("%name% x").unwrap(), "hive track x");
        assert_eq!(inf.expand("%12%\\a.sys").unwrap(), "%12%\\a.sys");
        assert_eq!(inf.expand("100%%").unwrap(), "100%");
        assert_eq!(
            inf.expand("%Missing%"),
            Err(UndefinedString("Missing".into()))
        );
        assert_eq!(inf.expand("50%"), Err(UndefinedString(String::new())));
    }
}
