//! fuseproxy's man pages, written by the hidden `fuseproxy --man DIR`:
//! fuseproxy(1) from the clap command that prints `--help`, and
//! fuseproxy-policy(5) from docs/policy-file.md (the README's link), with
//! the defaults `--check` prints for an empty file. Nothing here is a
//! second copy of either text.

use clap::CommandFactory;
use fuseproxy_manpage::{command_pages, markdown_page, Page, PageHead};
use fuseproxy_policies::Policy;

use crate::cli::Cli;

/// The policy format's text, as the README links to it.
const POLICY_FILE_DOC: &str = include_str!("../../docs/policy-file.md");

/// Every page this program documents.
pub fn pages() -> Result<Vec<Page>, String> {
    let mut pages = command_pages(
        Cli::command(),
        &[
            "fuseproxy-policy(5)",
            "fuseproxy-capture(1)",
            "mount.fuse3(8)",
        ],
    )
    .map_err(|e| format!("cannot render fuseproxy(1): {e}"))?;
    let source = format!("fuseproxy {}", env!("CARGO_PKG_VERSION"));
    let head = PageHead {
        name: "fuseproxy-policy",
        section: "5",
        source: &source,
        manual: "File Formats",
        summary: "the policy file of fuseproxy(1): what the proxy changes in a mount's traffic",
        synopsis: &[
            "fuseproxy --policy FILE [OPTIONS] MOUNTPOINT -- BACKEND_COMMAND...",
            "fuseproxy --check --policy FILE",
        ],
    };
    let defaults = Policy::default().to_toml();
    pages.push(markdown_page(
        &head,
        POLICY_FILE_DOC,
        &[("DEFAULTS", defaults.as_str())],
        &["fuseproxy(1)"],
    ));
    Ok(pages)
}
