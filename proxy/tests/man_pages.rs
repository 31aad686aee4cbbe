//! fuseproxy's man pages: `fuseproxy --man DIR` writes fuseproxy(1) and
//! fuseproxy-policy(5), man-db renders each without a warning, and each
//! holds the text it is made from: every option `--help` lists, its
//! examples and exit statuses; the policy format's sections from
//! docs/policy-file.md and the defaults `--check` prints. A wrong `--man`
//! is one line and a non-zero status.

mod common;
#[path = "../../testing/man_pages.rs"]
mod man_pages;

use std::fs;
use std::path::Path;

use man_pages::{headings, long_options, page_dir, render, run, words, write_pages};

#[test]
fn fuseproxy_1_has_every_option_of_help() {
    let dir = page_dir("fuseproxy");
    let pages = write_pages(&common::proxy_bin(), &dir);
    let names: Vec<_> = pages.iter().map(|p| p.file_name().unwrap()).collect();
    assert_eq!(names, ["fuseproxy.1", "fuseproxy-policy.5"]);
    let text = render(&dir.join("fuseproxy.1"));
    let heads = headings(&text);
    for h in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "EXAMPLES",
        "EXIT STATUS",
        "SEE ALSO",
    ] {
        assert!(heads.contains(&h), "no {h} in {heads:?}:\n{text}");
    }
    let help = run(&common::proxy_bin(), &["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let options = long_options(&help);
    for must in [
        "--policy",
        "--check",
        "--channel",
        "--backend-user",
        "--record",
        "--restart",
    ] {
        assert!(
            options.iter().any(|o| o == must),
            "{must} not found in --help:\n{help}"
        );
    }
    let page = words(&text);
    for option in &options {
        assert!(
            page.contains(option.as_str()),
            "{option} of --help is not in fuseproxy(1)"
        );
    }
    assert!(!page.contains("--man"), "the hidden --man is documented");
    // The same text: the help's paragraphs, examples and statuses read the
    // same in the page (compared with whitespace made single).
    for text_of_help in [
        "Every FUSE message between the kernel and the daemon passes through the proxy",
        "fuseproxy /mnt/img -- squashfuse -f image.sqfs /mnt/img",
        "2 the command line or the policy file is wrong",
        "Run the backend as USER (a name or a number)",
    ] {
        assert!(
            words(&help).contains(text_of_help),
            "not in --help: {text_of_help}"
        );
        assert!(
            page.contains(text_of_help),
            "not in fuseproxy(1): {text_of_help}"
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_policy_page_is_the_documents_text_and_the_defaults() {
    let dir = page_dir("policy");
    write_pages(&common::proxy_bin(), &dir);
    let text = render(&dir.join("fuseproxy-policy.5"));
    let heads = headings(&text);
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policy-file.md"))
            .unwrap();
    let mut want = vec!["NAME".to_string(), "SYNOPSIS".into(), "DESCRIPTION".into()];
    want.extend(
        doc.lines()
            .filter_map(|l| l.strip_prefix("## "))
            .map(|h| h.replace('`', "").to_uppercase()),
    );
    want.extend(["DEFAULTS".into(), "SEE ALSO".into()]);
    assert_eq!(heads, want, "{text}");
    // The annotated example, line for line.
    let start = doc.find("```toml").unwrap() + 7;
    let end = doc[start..].find("```").unwrap() + start;
    for line in doc[start..end].lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            text.contains(line.trim_end()),
            "example line {line:?} not in the page:\n{text}"
        );
    }
    // DEFAULTS is what --check prints for an empty file.
    let empty = dir.join("empty.toml");
    fs::write(&empty, "").unwrap();
    let check = run(
        &common::proxy_bin(),
        &["--check", "--policy", empty.to_str().unwrap()],
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let defaults = &text[text.find("\nDEFAULTS\n").expect("DEFAULTS")..];
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.contains("[times]"), "{check}");
    for line in check.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            defaults.contains(line),
            "--check line {line:?} not in DEFAULTS:\n{defaults}"
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_man_request_is_one_line() {
    let out = run(&common::proxy_bin(), &["--man"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("fuseproxy: --man takes one argument"),
        "{err}"
    );

    let dir = page_dir("absent");
    let absent = dir.join("absent");
    let out = run(&common::proxy_bin(), &["--man", absent.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(absent.to_str().unwrap()) && err.contains("not a directory"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    fs::remove_dir_all(&dir).unwrap();
}
