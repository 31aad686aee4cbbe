//! Man pages as a reader gets them: written by a program's hidden
//! `--man DIR` and rendered by man-db's `man -l` with groff's warnings on.
//! Shared by the proxy's and the capture tool's tests (included by
//! `#[path]`, as `libfuse_examples.rs` is). Needs man-db (scripts/setup.sh).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Longest any one command here may take; coreutils' `timeout` ends it
/// (and only it) past that.
const LIMIT_SECS: &str = "60";

/// Runs `program args...` under `timeout`, with the C locale (plain ASCII
/// output) and 80 columns.
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-k", "5", LIMIT_SECS])
        .arg(program)
        .args(args)
        .env("LC_ALL", "C")
        .env("MANWIDTH", "80")
        .env("COLUMNS", "80")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// An empty directory for one test's pages, unique to this process and
/// `tag`, under cargo's temporary directory.
pub fn page_dir(tag: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("man-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the page directory");
    dir
}

/// `bin --man DIR`: the paths it printed, each a file in `dir`.
pub fn write_pages(bin: &Path, dir: &Path) -> Vec<PathBuf> {
    let out = run(bin, &["--man", dir.to_str().expect("a UTF-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} --man: {:?}: {stderr}",
        bin.display(),
        out.status
    );
    assert!(
        stderr.is_empty(),
        "{} --man wrote to stderr: {stderr}",
        bin.display()
    );
    let paths: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    for p in &paths {
        assert_eq!(
            p.parent(),
            Some(dir),
            "{} is not in {}",
            p.display(),
            dir.display()
        );
        assert!(p.is_file(), "{} was printed but not written", p.display());
    }
    paths
}

/// `man --warnings -l FILE`: the page as text. Fails the test on any
/// warning from groff or man, or an empty page.
pub fn render(file: &Path) -> String {
    let out = run(
        Path::new("man"),
        &["--warnings", "-l", file.to_str().expect("a UTF-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "man -l {}: {:?}\n{stderr}",
        file.display(),
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines().count() > 10,
        "man -l {}: a near-empty page:\n{text}",
        file.display()
    );
    text
}

/// The page's section headings, as rendered: lines at the left margin.
pub fn headings(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    // The first and last lines are the header and footer.
    lines.pop();
    lines
        .into_iter()
        .skip(1)
        .filter(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
        .collect()
}

/// The long options a `--help` text lists: each `--name` that starts an
/// option's line (after `-x, ` for one with a short form).
pub fn long_options(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = match l.strip_prefix('-') {
                Some(rest) if !rest.starts_with('-') => rest.get(3..)?,
                _ => l,
            };
            let name = l.strip_prefix("--")?;
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(name.len());
            (end > 0).then(|| format!("--{}", &name[..end]))
        })
        .collect()
}

/// Every line of `text` as the page shows it (words separated by single
/// spaces), for looking up text that the page may have filled.
pub fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
