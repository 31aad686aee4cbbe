//! `PROGRAM --man DIR`: the one hidden request both programs take, looked
//! at before their own parsing so that it needs none of their required
//! arguments and stays out of `--help`.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::Page;

/// Answers `PROGRAM --man DIR`: writes `pages()` into the existing
/// directory DIR as NAME.SECTION, prints each path written, and returns the
/// exit status: 0, 1 when a page cannot be made or written, 2 when `--man`
/// is not followed by exactly one argument. `None` when `args` (the whole
/// command line) is not a --man request. Errors are one line on stderr,
/// prefixed with `program`.
pub fn man_request(
    program: &str,
    args: &[OsString],
    pages: impl FnOnce() -> Result<Vec<Page>, String>,
) -> Option<i32> {
    if args.get(1).map(OsString::as_os_str) != Some(OsStr::new("--man")) {
        return None;
    }
    let [dir] = &args[2..] else {
        eprintln!("{program}: --man takes one argument: the directory to write the man pages into");
        return Some(2);
    };
    match pages().and_then(|pages| write_pages(Path::new(dir), &pages)) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            Some(0)
        }
        Err(e) => {
            eprintln!("{program}: --man: {e}");
            Some(1)
        }
    }
}

/// Writes each page into `dir` (which must be a directory) as
/// NAME.SECTION; returns the paths written.
pub fn write_pages(dir: &Path, pages: &[Page]) -> Result<Vec<std::path::PathBuf>, String> {
    if !dir.is_dir() {
        return Err(format!("'{}' is not a directory", dir.display()));
    }
    pages
        .iter()
        .map(|page| {
            let path = dir.join(page.file_name());
            std::fs::write(&path, &page.roff)
                .map_err(|e| format!("cannot write '{}': {e}", path.display()))?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn one() -> Result<Vec<Page>, String> {
        Ok(vec![Page {
            name: "demo".into(),
            section: "1",
            roff: ".TH DEMO 1\n".into(),
        }])
    }

    #[test]
    fn only_a_leading_man_is_a_request() {
        assert_eq!(
            man_request("demo", &args(&["demo", "/m", "--man"]), one),
            None
        );
        assert_eq!(man_request("demo", &args(&["demo"]), one), None);
        assert_eq!(man_request("demo", &args(&["demo", "--man"]), one), Some(2));
        assert_eq!(
            man_request("demo", &args(&["demo", "--man", "a", "b"]), one),
            Some(2)
        );
    }

    #[test]
    fn pages_are_written_or_the_error_is_one_line() {
        let dir =
            std::env::temp_dir().join(format!("fuseproxy-manpage-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = write_pages(&dir, &one().unwrap()).unwrap();
        assert_eq!(written, [dir.join("demo.1")]);
        assert_eq!(
            std::fs::read_to_string(&written[0]).unwrap(),
            ".TH DEMO 1\n"
        );
        let e = write_pages(&dir.join("absent"), &one().unwrap()).unwrap_err();
        assert!(e.contains("absent") && e.contains("not a directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
