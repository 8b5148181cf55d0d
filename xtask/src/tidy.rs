//! Checks the compiler does not make.

use std::path::Path;

pub fn run() -> Result<(), String> {
    let root = crate::workspace_root();
    let mut problems = Vec::new();
    for dir in ["crates", "services", "xtask", "tests"] {
        visit(&root.join(dir), &mut problems);
    }
    if problems.is_empty() {
        println!("tidy: ok");
        Ok(())
    } else {
        Err(format!("tidy found problems:\n{}", problems.join("\n")))
    }
}

fn visit(dir: &Path, problems: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            visit(&path, problems);
        } else if path.file_name().is_some_and(|n| n == "lib.rs" || n == "main.rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.lines().take(5).any(|line| line.starts_with("//!")) {
                problems.push(format!("{}: crate root without a //! doc", path.display()));
            }
        }
    }
}
