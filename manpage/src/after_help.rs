//! The text a program's `--help` shows after its options
//! (`after_long_help`), as man sections. A line at the left margin that is
//! `HEADING:` or `HEADING (NOTE):`, HEADING in capitals, starts a section;
//! the indented lines under it keep their layout as --help shows it
//! (examples, tables of exit statuses), except lines too long for a
//! terminal, which are prose and are filled.

use clap_mangen::roff::{roman, Roff};

/// A body line longer than this, once the section's indent is removed, is
/// prose: filled to the page's width rather than kept as laid out.
const KEPT_WIDTH: usize = 78;

/// One section of the after-help text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    /// The heading, in capitals, without its colon.
    pub heading: String,
    /// The parenthesised note after the heading, if any.
    pub note: Option<String>,
    /// The lines under the heading, as written.
    pub lines: Vec<String>,
}

/// The sections of `text`; lines before the first heading make a NOTES
/// section.
pub(crate) fn sections(text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in text.lines() {
        if let Some((heading, note)) = heading(line) {
            out.push(Section {
                heading,
                note,
                lines: Vec::new(),
            });
            continue;
        }
        match out.last_mut() {
            Some(section) => section.lines.push(line.to_string()),
            None if line.trim().is_empty() => {}
            None => out.push(Section {
                heading: "NOTES".to_string(),
                note: None,
                lines: vec![line.to_string()],
            }),
        }
    }
    out
}

/// `HEADING:` or `HEADING (NOTE):` at the left margin.
fn heading(line: &str) -> Option<(String, Option<String>)> {
    let head = line.strip_suffix(':')?;
    let (name, note) = match head.split_once(" (") {
        Some((name, rest)) => (name, Some(rest.strip_suffix(')')?.to_string())),
        None => (head, None),
    };
    let capitals = name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_uppercase() || c == ' ');
    capitals.then(|| (name.to_string(), note))
}

/// Appends `section` to `roff`: `.SH`, its note, then its lines, kept as
/// laid out (no-fill) but for long prose lines, filled at their indent.
pub(crate) fn render(roff: &mut Roff, section: &Section) {
    roff.control("SH", [section.heading.as_str()]);
    if let Some(note) = &section.note {
        roff.text([roman(format!("({note})"))]);
        roff.control("PP", []);
    }
    let mut lines: &[String] = &section.lines;
    while let Some((last, rest)) = lines.split_last() {
        if !last.trim().is_empty() {
            break;
        }
        lines = rest;
    }
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| leading_spaces(l))
        .min()
        .unwrap_or(0);
    roff.control("nf", []);
    for line in lines {
        if line.trim().is_empty() {
            roff.control("sp", []);
            continue;
        }
        let line = &line[indent..];
        if line.chars().count() <= KEPT_WIDTH {
            roff.text([roman(line)]);
        } else {
            let lead = format!("{}n", leading_spaces(line));
            roff.control("RS", [lead.as_str()]);
            roff.control("fi", []);
            roff.text([roman(line.trim_start())]);
            roff.control("nf", []);
            roff.control("RE", []);
        }
    }
    roff.control("fi", []);
}

/// Spaces before the first other character (the help text has no tabs).
fn leading_spaces(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_split_sections() {
        let text = "EXAMPLES:\n    a b\n\n    c\nEXIT STATUS (decode, stats):\n    0  ok\n";
        let s = sections(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].heading, "EXAMPLES");
        assert_eq!(s[0].lines, ["    a b", "", "    c"]);
        assert_eq!(s[1].heading, "EXIT STATUS");
        assert_eq!(s[1].note.as_deref(), Some("decode, stats"));
    }

    #[test]
    fn prose_lines_are_not_headings() {
        let text = "Filters and JSON output: see decode --help.\nLINES (decode):\n  x\n";
        let s = sections(text);
        assert_eq!(s[0].heading, "NOTES");
        assert_eq!(s[0].lines, ["Filters and JSON output: see decode --help."]);
        assert_eq!(s[1].heading, "LINES");
        assert!(heading("Examples:").is_none());
        assert!(heading("    EXAMPLES:").is_none());
    }

    #[test]
    fn short_lines_keep_their_layout_and_long_ones_are_filled() {
        let long = format!("    {}", "word ".repeat(30));
        let text = format!("EXAMPLES:\n    cmd -o x\n        indented\n{long}\n\n");
        let mut roff = Roff::new();
        for s in sections(&text) {
            render(&mut roff, &s);
        }
        let out = roff.to_roff();
        assert!(
            out.contains(".nf\ncmd \\-o x\n    indented\n.RS 0n\n.fi\nword word"),
            "{out}"
        );
        assert!(out.trim_end().ends_with(".RE\n.fi"), "{out}");
    }
}
