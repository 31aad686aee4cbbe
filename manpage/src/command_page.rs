//! A program's man pages from its clap [`Command`]: the same text its
//! `--help` prints. clap_mangen writes the title, NAME, SYNOPSIS,
//! DESCRIPTION (the long about), OPTIONS (each option's long help) and the
//! list of subcommands; the text after the options becomes sections of
//! their own ([`crate::after_help`]); each subcommand gets a page of its
//! own, `PROGRAM-SUBCOMMAND(1)`, which the list names.

use clap::Command;
use clap_mangen::roff::{roman, Roff};
use clap_mangen::Man;

use crate::{after_help, part, Page};

/// The pages of `cmd`: its own first, then one per visible subcommand.
/// `see_also` names other pages (`fuseproxy-policy(5)`) for the program's
/// page; a subcommand's page names the program's.
pub fn command_pages(cmd: Command, see_also: &[&str]) -> Result<Vec<Page>, std::io::Error> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let mut pages = vec![page(&cmd, &source, see_also)?];
    let parent = format!("{}(1)", cmd.get_name());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push(page(sub, &source, &[parent.as_str()])?);
    }
    Ok(pages)
}

/// One command's page.
fn page(cmd: &Command, source: &str, see_also: &[&str]) -> Result<Page, std::io::Error> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
    let man = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("1")
        .date(crate::NO_DATE)
        .source(source)
        .manual("User Commands");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    out.extend_from_slice(crate::LAYOUT.as_bytes());
    let mut rest = Vec::new();
    man.render_name_section(&mut rest)?;
    man.render_synopsis_section(&mut rest)?;
    man.render_description_section(&mut rest)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut rest)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut rest)?;
    }
    let mut roff = Roff::new();
    let after = cmd.get_after_long_help().or(cmd.get_after_help());
    for section in after_help::sections(&after.map(|t| t.to_string()).unwrap_or_default()) {
        after_help::render(&mut roff, &section);
    }
    if !see_also.is_empty() {
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roman(see_also.join(", "))]);
    }
    let mut roff_text = String::from_utf8_lossy(&out).into_owned();
    // Each of clap_mangen's parts starts with the same preamble; keep the
    // title's.
    let rest = String::from_utf8_lossy(&rest).into_owned();
    roff_text.push_str(&rest.replace(&crate::preamble(), ""));
    roff_text.push_str(&part(&roff));
    let mut version = Vec::new();
    if cmd.get_version().is_some() {
        man.render_version_section(&mut version)?;
    }
    roff_text.push_str(&String::from_utf8_lossy(&version).replace(&crate::preamble(), ""));
    Ok(Page {
        name,
        section: "1",
        roff: roff_text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn demo() -> Command {
        Command::new("demo")
            .version("1.2.3")
            .about("Does a demo.")
            .long_about("Does a demo, at length.\n\nA second paragraph.")
            .arg(
                Arg::new("level")
                    .long("level")
                    .value_name("N")
                    .help("How much.")
                    .long_help("How much, said at length."),
            )
            .arg(
                Arg::new("secret")
                    .long("secret")
                    .hide(true)
                    .action(ArgAction::SetTrue),
            )
            .after_long_help("EXAMPLES:\n    demo --level 3\n\nEXIT STATUS:\n    0  fine")
            .subcommand(Command::new("run").about("Runs it.").arg(Arg::new("file")))
    }

    #[test]
    fn a_page_holds_the_long_help() {
        let pages = command_pages(demo(), &["other(5)"]).unwrap();
        assert_eq!(pages.len(), 2);
        let p = &pages[0];
        assert_eq!(p.file_name(), "demo.1");
        for part in [
            ".TH DEMO 1 \"\" \"demo 1.2.3\" \"User Commands\"",
            ".nh\n.ad l\n.SH NAME\ndemo \\- Does a demo.",
            ".SH SYNOPSIS",
            "Does a demo, at length.",
            ".SH OPTIONS",
            "How much, said at length.",
            ".SH SUBCOMMANDS",
            "demo\\-run(1)",
            ".SH EXAMPLES\n.nf\ndemo \\-\\-level 3",
            ".SH \"EXIT STATUS\"",
            ".SH \"SEE ALSO\"\nother(5)",
            "v1.2.3",
        ] {
            assert!(p.roff.contains(part), "{part:?} missing from:\n{}", p.roff);
        }
        assert!(!p.roff.contains("secret"), "{}", p.roff);
        assert_eq!(p.roff.matches(".ie \\n(.g").count(), 1, "{}", p.roff);
        assert_eq!(pages[1].name, "demo-run");
        assert!(
            pages[1].roff.contains(".SH \"SEE ALSO\"\ndemo(1)"),
            "{}",
            pages[1].roff
        );
    }
}
