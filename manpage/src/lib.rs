//! fuseproxy's man pages, made from the text users already read elsewhere,
//! so that no page is a second copy to keep in step by hand:
//!
//! - a program's page, and one per subcommand (`NAME-SUB`, as git's), from
//!   the clap [`clap::Command`] that prints its `--help`
//!   ([`command_pages`]);
//! - the policy file's page from the markdown the README links to
//!   ([`markdown_page`]).
//!
//! Each program writes its own pages when run as `PROGRAM --man DIR`
//! ([`man_request`], [`write_pages`]); `scripts/package.sh` does that
//! before it builds the Debian package.

mod after_help;
mod command_page;
mod markdown;
mod request;

pub use command_page::command_pages;
pub use markdown::{markdown_page, PageHead};
pub use request::{man_request, write_pages};

/// One man page: its roff source and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The page's name, as `man NAME` finds it (`fuseproxy-capture`).
    pub name: String,
    /// The manual section: "1" for programs, "5" for file formats.
    pub section: &'static str,
    /// The page, in roff with the man macros.
    pub roff: String,
}

impl Page {
    /// The page's file name: `NAME.SECTION`.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.section)
    }
}

/// The date argument of a page's `.TH`: none (the version in the title
/// line says which release a page is of). An empty argument is written
/// `""`, since a bare one would let the next argument take its place.
const NO_DATE: &str = "\"\"";

/// What follows each page's `.TH`: no hyphenation and no justification,
/// since the pages are full of option names, paths and commands that
/// neither should touch.
const LAYOUT: &str = ".nh\n.ad l\n";

/// The roff a page starts with: the string clap_mangen's writer defines
/// for a typewriter apostrophe. Every part rendered on its own carries it;
/// a page keeps it once.
fn preamble() -> String {
    clap_mangen::roff::Roff::new().render()
}

/// `roff` rendered as a part of a page, without the preamble.
fn part(roff: &clap_mangen::roff::Roff) -> String {
    let text = roff.render();
    text.strip_prefix(&preamble()).unwrap_or(&text).to_string()
}
