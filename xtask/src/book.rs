//! `cargo xtask book`: builds the documentation book (`docs/`, mdBook) into
//! `target/book` and checks every link in it and in the README.
//!
//! A link to another chapter must name a chapter that exists and, with a
//! `#fragment`, an id the rendered page has (mdBook's own ids, read from
//! the HTML it wrote). A link may not leave the book's `src/` (it would be
//! broken in the HTML); repository files are named in code spans instead,
//! and a code span that names a repository path (`crates/...`,
//! `services/...`, `examples/...`, ...) must name one that exists, so a
//! moved file cannot leave a stale reference behind. Links with a scheme
//! (`https:`, `mailto:`) are not fetched: the machine that builds the book
//! may have no internet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use pulldown_cmark::{Event, Options, Parser, Tag};

/// Top-level directories a code span may name a path under.
const REPOSITORY_DIRS: &[&str] =
    &["crates", "services", "examples", "deploy", "proto", "migrations", "tests", "xtask", "docs", ".ci"];

/// Words that stand for a name in a path (`migrations/NNNN_name.sql`).
const PLACEHOLDERS: &[&str] = &["NNNN", "NAME", "ID", "FILE", "DIR", "SERVICE", "X"];

/// Builds the book and checks its links and the README's; the errors, one
/// per bad link, name the file and the target.
pub fn build_and_check(root: &Path) -> Result<PathBuf, Vec<String>> {
    let book = mdbook_driver::MDBook::load(root.join("docs")).map_err(|e| vec![format!("docs/book.toml: {e:#}")])?;
    let out = book.root.join(&book.config.build.build_dir);
    let out = normalize(&out).unwrap_or(out);
    book.build().map_err(|e| vec![format!("building the book: {e:#}")])?;
    let mut errors = check_book(root, &root.join("docs/src"), &out);
    for file in ["README.md", "ARCHITECTURE.md"] {
        errors.extend(check_root_document(root, file));
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// What a Markdown file links to and names in code spans.
#[derive(Debug, Default)]
struct References {
    links: Vec<String>,
    code: Vec<String>,
}

fn references(markdown: &str) -> References {
    let mut found = References::default();
    for event in Parser::new_ext(markdown, Options::all()) {
        match event {
            Event::Start(Tag::Link { dest_url, .. }) | Event::Start(Tag::Image { dest_url, .. }) => {
                found.links.push(dest_url.into_string())
            }
            Event::Code(code) => found.code.push(code.into_string()),
            _ => {}
        }
    }
    found
}

fn is_external(link: &str) -> bool {
    link.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    })
}

/// `a/b/../c` as `a/c`, without touching the file system; `None` when it
/// climbs above where it started.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// The repository path a code span names, if it names one: `crates/x/y.rs`
/// or `crates/x/y.rs:10-20`; not globs, placeholders or commands.
fn repository_path(code: &str) -> Option<&str> {
    let path = code.split_once(':').map_or(code, |(path, _)| path);
    let (top, _) = path.split_once('/')?;
    if !REPOSITORY_DIRS.contains(&top)
        || path.contains(['*', '<', '>', '{', '}', ' ', '$'])
        || path.contains("...")
        || path.split('/').any(|part| PLACEHOLDERS.iter().any(|p| part.split(['.', '_', '-']).any(|w| w == *p)))
    {
        return None;
    }
    Some(path)
}

fn check_code_paths(root: &Path, file: &str, code: &[String], errors: &mut Vec<String>) {
    for span in code {
        if let Some(path) = repository_path(span)
            && !root.join(path.trim_end_matches('/')).exists()
        {
            errors.push(format!("{file}: `{span}` names a path that does not exist"));
        }
    }
}

/// Every file under `dir` whose extension is `ext`, in a stable order.
fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The ids of every page mdBook rendered, by page (relative to the output).
fn rendered_ids(out: &Path) -> BTreeMap<PathBuf, BTreeSet<String>> {
    let id = regex::Regex::new(r#"\bid="([^"]+)""#).expect("a valid regex");
    files_under(out, "html")
        .into_iter()
        .map(|path| {
            let html = std::fs::read_to_string(&path).unwrap_or_default();
            let ids = id.captures_iter(&html).map(|c| c[1].to_string()).collect();
            (path.strip_prefix(out).expect("under the output").to_owned(), ids)
        })
        .collect()
}

fn check_book(root: &Path, src: &Path, out: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let pages = rendered_ids(out);
    for path in files_under(src, "md") {
        let chapter = path.strip_prefix(src).expect("under src").to_owned();
        let name = format!("docs/src/{}", chapter.display());
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let found = references(&text);
        check_code_paths(root, &name, &found.code, &mut errors);
        for link in found.links {
            if is_external(&link) {
                continue;
            }
            let (target, fragment) = link.split_once('#').map_or((link.as_str(), None), |(t, f)| (t, Some(f)));
            let target = if target.is_empty() {
                chapter.clone()
            } else {
                match normalize(&chapter.parent().unwrap_or(Path::new("")).join(target)) {
                    Some(target) => target,
                    None => {
                        errors.push(format!("{name}: {link} leaves the book (name repository files in code)"));
                        continue;
                    }
                }
            };
            if !src.join(&target).exists() {
                errors.push(format!("{name}: {link}: no such file in the book"));
                continue;
            }
            if target.extension().is_some_and(|e| e == "md") {
                let page = target.with_extension("html");
                let Some(ids) = pages.get(&page) else {
                    errors.push(format!("{name}: {link}: the chapter is not in SUMMARY.md, so it is not rendered"));
                    continue;
                };
                if let Some(fragment) = fragment
                    && !ids.contains(fragment)
                {
                    errors.push(format!("{name}: {link}: {} has no #{fragment}", page.display()));
                }
            } else if fragment.is_some() {
                errors.push(format!("{name}: {link}: a fragment on a file that is not a chapter"));
            }
        }
    }
    errors
}

/// GitHub's id for a heading: lower case, punctuation dropped, spaces as
/// hyphens; repeats get `-1`, `-2`, ...
fn github_ids(markdown: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_heading = false;
    let mut text = String::new();
    for event in Parser::new_ext(markdown, Options::all()) {
        match event {
            Event::Start(Tag::Heading { .. }) => {
                in_heading = true;
                text.clear();
            }
            Event::End(pulldown_cmark::TagEnd::Heading(_)) => {
                in_heading = false;
                let base: String = text
                    .to_lowercase()
                    .chars()
                    .filter_map(|c| match c {
                        ' ' => Some('-'),
                        c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                        _ => None,
                    })
                    .collect();
                let count = seen.entry(base.clone()).or_default();
                ids.insert(if *count == 0 { base.clone() } else { format!("{base}-{count}") });
                *count += 1;
            }
            Event::Text(t) | Event::Code(t) if in_heading => text.push_str(&t),
            _ => {}
        }
    }
    ids
}

/// A document at the repository's root (shown by GitHub, or included in
/// the book): its links and the paths it names.
fn check_root_document(root: &Path, file: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let Ok(text) = std::fs::read_to_string(root.join(file)) else {
        return vec![format!("{file}: cannot be read")];
    };
    let found = references(&text);
    check_code_paths(root, file, &found.code, &mut errors);
    let ids = github_ids(&text);
    for link in found.links {
        if is_external(&link) {
            continue;
        }
        let (target, fragment) = link.split_once('#').map_or((link.as_str(), None), |(t, f)| (t, Some(f)));
        if target.is_empty() {
            if let Some(fragment) = fragment
                && !ids.contains(fragment)
            {
                errors.push(format!("{file}: {link}: no such heading"));
            }
            continue;
        }
        match normalize(Path::new(target)) {
            Some(path) if root.join(&path).exists() => {}
            _ => errors.push(format!("{file}: {link}: no such file")),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_found_in_text_tables_and_images() {
        let found = references(
            "See [a](a.md#x) and `crates/auth/src/lib.rs`.\n\n| t |\n| - |\n| [b](b.md) |\n\n![i](img/i.png)\n\n```sh\n[not](a link)\n```\n",
        );
        assert_eq!(found.links, ["a.md#x", "b.md", "img/i.png"]);
        assert_eq!(found.code, ["crates/auth/src/lib.rs"]);
    }

    #[test]
    fn code_spans_name_repository_paths_only_when_they_are_paths() {
        assert_eq!(repository_path("crates/auth/src/lib.rs"), Some("crates/auth/src/lib.rs"));
        assert_eq!(repository_path("services/a/src/b.rs:83-115"), Some("services/a/src/b.rs"));
        assert_eq!(repository_path("examples/policies/"), Some("examples/policies/"));
        for not_a_path in [
            "cargo test --workspace",
            "crates/*/src",
            "migrations/NNNN_name.sql",
            "docs/<chapter>.md",
            "tests/...",
            "policy_evaluations_total{decision}",
            "warden.audit.v1.AuditService/*",
            "http://127.0.0.1:9091/metrics",
            "a/b",
        ] {
            assert_eq!(repository_path(not_a_path), None, "{not_a_path}");
        }
    }

    #[test]
    fn paths_may_not_climb_out() {
        assert_eq!(normalize(Path::new("a/../b.md")), Some(PathBuf::from("b.md")));
        assert_eq!(normalize(Path::new("../../README.md")), None);
        assert!(is_external("https://example.com") && is_external("mailto:x@y"));
        assert!(!is_external("policies.md#limits") && !is_external("#top"));
    }

    #[test]
    fn github_ids_follow_githubs_rules() {
        let ids =
            github_ids("# Warden\n## What an agent proves, and what it may claim\n## `wardenctl`\n## Tour\n## Tour\n");
        let want = ["warden", "what-an-agent-proves-and-what-it-may-claim", "wardenctl", "tour", "tour-1"];
        assert_eq!(ids, want.iter().map(|s| s.to_string()).collect());
    }

    #[test]
    fn a_broken_book_is_reported_link_by_link() {
        let root = tempfile::tempdir().unwrap();
        let docs = root.path().join("docs");
        std::fs::create_dir_all(docs.join("src")).unwrap();
        std::fs::create_dir_all(root.path().join("crates/real")).unwrap();
        std::fs::write(docs.join("book.toml"), "[book]\ntitle = \"t\"\n[build]\nbuild-dir = \"../out\"\n").unwrap();
        std::fs::write(docs.join("src/SUMMARY.md"), "# Summary\n\n- [One](one.md)\n- [Two](two.md)\n").unwrap();
        std::fs::write(
            docs.join("src/one.md"),
            "# One\n\n## Has an id\n\n[ok](two.md#second) [ok](#has-an-id) [web](https://example.com)\n\
             [bad anchor](two.md#nowhere) [missing](three.md) [out](../../README.md) [orphan](orphan.md)\n\
             `crates/real` `crates/gone.rs`\n",
        )
        .unwrap();
        std::fs::write(docs.join("src/two.md"), "# Two\n\n## Second\n").unwrap();
        std::fs::write(docs.join("src/orphan.md"), "# Not in the summary\n").unwrap();
        std::fs::write(
            root.path().join("README.md"),
            "# R\n\n[ok](#r) [bad](#nope) [book](docs/src/one.md) [gone](docs/x.md)\n",
        )
        .unwrap();
        std::fs::write(root.path().join("ARCHITECTURE.md"), "# A\n\n`crates/real` `crates/moved/lib.rs`\n").unwrap();
        let errors = build_and_check(root.path()).unwrap_err();
        let text = errors.join("\n");
        for expected in [
            "docs/src/one.md: two.md#nowhere: two.html has no #nowhere",
            "docs/src/one.md: three.md: no such file in the book",
            "docs/src/one.md: ../../README.md leaves the book",
            "docs/src/one.md: orphan.md: the chapter is not in SUMMARY.md",
            "docs/src/one.md: `crates/gone.rs` names a path that does not exist",
            "README.md: #nope: no such heading",
            "README.md: docs/x.md: no such file",
            "ARCHITECTURE.md: `crates/moved/lib.rs` names a path that does not exist",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(errors.len(), 8, "{text}");
    }
}
