//! A man page from a markdown document, for pages whose text is kept as
//! markdown that the README links to (the policy file's format). Only the
//! markdown those documents use is understood: `#` the document's title
//! (dropped: the page has its own NAME), `##` a section, `###` a
//! subsection, paragraphs, `- ` list items, fenced code blocks, and inline
//! `code`, **bold** and [links](target) (the link's text is kept). Anything
//! else is text as written.

use clap_mangen::roff::{bold, roman, Inline, Roff};

use crate::{part, preamble, Page};

/// What a markdown page has that its markdown does not: the title line,
/// NAME and SYNOPSIS.
#[derive(Debug, Clone, Copy)]
pub struct PageHead<'a> {
    /// The page's name (`fuseproxy-policy`).
    pub name: &'a str,
    /// Its section ("5").
    pub section: &'static str,
    /// The title line's source (`fuseproxy 0.1.0`).
    pub source: &'a str,
    /// The title line's manual (`File Formats`).
    pub manual: &'a str,
    /// NAME's one line, after `NAME -`.
    pub summary: &'a str,
    /// SYNOPSIS, one line each.
    pub synopsis: &'a [&'a str],
}

/// The page: title, NAME, SYNOPSIS, the markdown (text before its first
/// `##` is DESCRIPTION), then `extra` sections of preformatted text
/// (heading, text), then SEE ALSO.
pub fn markdown_page(
    head: &PageHead,
    markdown: &str,
    extra: &[(&str, &str)],
    see_also: &[&str],
) -> Page {
    let mut roff = Roff::new();
    let title = head.name.to_uppercase();
    roff.control(
        "TH",
        [
            title.as_str(),
            head.section,
            crate::NO_DATE,
            head.source,
            head.manual,
        ],
    );
    roff.control("nh", []);
    roff.control("ad", ["l"]);
    roff.control("SH", ["NAME"]);
    roff.text([roman(format!("{} - {}", head.name, head.summary))]);
    roff.control("SH", ["SYNOPSIS"]);
    for (i, line) in head.synopsis.iter().enumerate() {
        if i > 0 {
            roff.control("br", []);
        }
        roff.text([roman(*line)]);
    }
    roff.control("SH", ["DESCRIPTION"]);
    let mut fresh = true;
    for block in blocks(markdown) {
        fresh = render(&mut roff, &block, fresh);
    }
    for (heading, text) in extra {
        roff.control("SH", [*heading]);
        code(&mut roff, text.lines());
    }
    if !see_also.is_empty() {
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roman(see_also.join(", "))]);
    }
    Page {
        name: head.name.to_string(),
        section: head.section,
        roff: format!("{}{}", preamble(), part(&roff)),
    }
}

/// A block of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    /// `#`s counted, and the heading's text.
    Heading(usize, String),
    /// A paragraph's lines joined by spaces.
    Paragraph(String),
    /// A list item's lines joined by spaces.
    Item(String),
    /// A fenced block's lines, as written.
    Code(Vec<String>),
}

/// The document's blocks, in order. A fence left open runs to the end.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            out.extend(open.take());
            let body = lines
                .by_ref()
                .take_while(|l| !l.trim_start().starts_with("```"))
                .map(str::to_string)
                .collect();
            out.push(Block::Code(body));
        } else if trimmed.is_empty() {
            out.extend(open.take());
        } else if let Some(level) = heading_level(trimmed) {
            out.extend(open.take());
            out.push(Block::Heading(level, trimmed[level..].trim().to_string()));
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            out.extend(open.take());
            open = Some(Block::Item(item.trim().to_string()));
        } else {
            match &mut open {
                Some(Block::Paragraph(text) | Block::Item(text)) => {
                    text.push(' ');
                    text.push_str(trimmed);
                }
                _ => open = Some(Block::Paragraph(trimmed.to_string())),
            }
        }
    }
    out.extend(open);
    out
}

/// `#`s that start a heading (followed by a space), if it is one.
fn heading_level(line: &str) -> Option<usize> {
    let level = line.len() - line.trim_start_matches('#').len();
    (level > 0 && line[level..].starts_with(' ')).then_some(level)
}

/// Appends `block`; `fresh` says a section heading came just before (no
/// paragraph break is needed). Returns whether the next block is fresh.
fn render(roff: &mut Roff, block: &Block, fresh: bool) -> bool {
    match block {
        Block::Heading(1, _) => return fresh,
        Block::Heading(2, text) => {
            roff.control("SH", [plain(text).to_uppercase().as_str()]);
            return true;
        }
        Block::Heading(_, text) => {
            roff.control("SS", [plain(text).as_str()]);
            return true;
        }
        Block::Paragraph(text) => {
            if !fresh {
                roff.control("PP", []);
            }
            roff.text(inlines(text));
        }
        Block::Item(text) => {
            roff.control("IP", ["\\(bu", "2"]);
            roff.text(inlines(text));
        }
        Block::Code(lines) => {
            if !fresh {
                roff.control("PP", []);
            }
            code(roff, lines.iter().map(String::as_str));
        }
    }
    false
}

/// Preformatted lines, indented.
fn code<'a>(roff: &mut Roff, lines: impl Iterator<Item = &'a str>) {
    roff.control("RS", ["4"]);
    roff.control("nf", []);
    for line in lines {
        if line.trim().is_empty() {
            roff.control("sp", []);
        } else {
            roff.text([roman(line)]);
        }
    }
    roff.control("fi", []);
    roff.control("RE", []);
}

/// A heading's text without its markup.
fn plain(text: &str) -> String {
    inlines(text)
        .into_iter()
        .map(|i| match i {
            Inline::Roman(s) | Inline::Bold(s) | Inline::Italic(s) => s,
            Inline::LineBreak => String::new(),
        })
        .collect()
}

/// A paragraph's inline markup: `code` and **bold** in bold, a link as its
/// text; an unclosed mark is text.
fn inlines(text: &str) -> Vec<Inline> {
    let mut out = Vec::new();
    let mut words = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let span = if let Some(after) = rest.strip_prefix("**") {
            after
                .find("**")
                .map(|end| (bold(after[..end].replace('`', "")), &after[end + 2..]))
        } else if let Some(after) = rest.strip_prefix('`') {
            after
                .find('`')
                .map(|end| (bold(&after[..end]), &after[end + 1..]))
        } else if c == '[' {
            link(rest).map(|(label, after)| (roman(label), after))
        } else {
            None
        };
        match span {
            Some((inline, after)) => {
                if !words.is_empty() {
                    out.push(roman(std::mem::take(&mut words)));
                }
                out.push(inline);
                rest = after;
            }
            None => {
                words.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if !words.is_empty() {
        out.push(roman(words));
    }
    out
}

/// `[label](target)` at the start of `s`: the label and what follows.
fn link(s: &str) -> Option<(&str, &str)> {
    let close = s.find(']')?;
    let label = &s[1..close];
    let after = s[close + 1..].strip_prefix('(')?;
    let end = after.find(')')?;
    (!label.contains('[')).then_some((label, &after[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_a_document() {
        let md = "# Title\n\nOne line\nand the next.\n\n## Part two\n\n- an item\n  going on\n- another\n\n```toml\n[x]\n\na = 1\n```\n### Sub\ntext";
        assert_eq!(
            blocks(md),
            vec![
                Block::Heading(1, "Title".into()),
                Block::Paragraph("One line and the next.".into()),
                Block::Heading(2, "Part two".into()),
                Block::Item("an item going on".into()),
                Block::Item("another".into()),
                Block::Code(vec!["[x]".into(), "".into(), "a = 1".into()]),
                Block::Heading(3, "Sub".into()),
                Block::Paragraph("text".into()),
            ]
        );
    }

    #[test]
    fn inline_markup() {
        let i = inlines("run `fuseproxy --check`, see **Reload.** and [the README](../README.md); [[paths]] stays, `open");
        assert_eq!(
            i,
            vec![
                roman("run "),
                bold("fuseproxy --check"),
                roman(", see "),
                bold("Reload."),
                roman(" and "),
                roman("the README"),
                roman("; [[paths]] stays, `open"),
            ]
        );
    }

    #[test]
    fn a_page_from_markdown() {
        let head = PageHead {
            name: "demo-file",
            section: "5",
            source: "demo 1",
            manual: "File Formats",
            summary: "the demo's file",
            synopsis: &["demo --file FILE", "demo --check FILE"],
        };
        let md =
            "# Demo files\n\nIntro.\n\n## Reload\n\nOn SIGHUP.\n\nAgain.\n\n```\n.dot first\n```\n";
        let p = markdown_page(&head, md, &[("DEFAULTS", "a = 1\n")], &["demo(1)"]);
        assert_eq!(p.file_name(), "demo-file.5");
        for part in [
            ".TH DEMO-FILE 5 \"\" \"demo 1\" \"File Formats\"",
            ".nh\n.ad l\n.SH NAME\ndemo\\-file \\- the demo\\*(Aqs file",
            "demo \\-\\-file FILE\n.br\ndemo \\-\\-check FILE",
            ".SH DESCRIPTION\nIntro.\n.SH RELOAD\nOn SIGHUP.\n.PP\nAgain.\n.PP\n.RS 4\n.nf\n\\&.dot first\n.fi\n.RE",
            ".SH DEFAULTS\n.RS 4\n.nf\na = 1\n",
            ".SH \"SEE ALSO\"\ndemo(1)",
        ] {
            assert!(p.roff.contains(part), "{part:?} missing from:\n{}", p.roff);
        }
        assert!(!p.roff.contains("Demo files"));
    }
}
