//! The README's commands, run as written.
//!
//! The first block's two commands: `cargo xtask dev` is
//! [`xtask::stack::Stack`], started here as `cargo xtask dev` starts it,
//! but on ports the system picks (`wardenctl` finds them through
//! `WARDEN_ADDR` and its siblings, which the README's commands leave
//! unset) and with its data directory as `warden-data` in a scratch
//! directory the commands run in; `cargo test --workspace` (and `cargo
//! xtask book`, which the README names in its text) are what `.ci/run`
//! runs, which this test checks.
//!
//! A block after a `<!-- file: PATH -->` comment shows a repository file
//! (an MCP client's config, the gateway's upstreams file): it must be that
//! file, as it is, so what the README shows is what the tour runs with.
//! Every other block belongs to a terminal of the tour, named by the
//! `<!-- terminal: NAME -->` comment before it (GitHub does not show it).
//! A terminal is one bash session (`set -eo pipefail`, stderr into
//! stdout): its `sh` blocks are typed into it as written, with `cargo` a
//! shim that runs the `wardenctl` this test run built (`cargo run -q -p
//! wardenctl -- ARGS` is `wardenctl ARGS`; anything else fails). Its
//! `text` blocks are what it must print next: line by line, `...` standing
//! for any text within a line, and a line of `...` alone for any lines. A
//! `text` block is waited for (the agent's terminal waits for a review),
//! and before each `sh` block the audit log must have settled, as it has by
//! the time a person has read the text.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Clone, PartialEq)]
struct Block {
    terminal: Option<String>,
    /// The repository file the block shows.
    file: Option<String>,
    language: String,
    text: String,
}

/// Every fenced block, with the terminal comment before it.
fn blocks(readme: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let (mut terminal, mut file) = (None, None);
    let mut open: Option<(String, Vec<&str>)> = None;
    for line in readme.lines() {
        if let Some((language, lines)) = &mut open {
            if line.starts_with("```") {
                found.push(Block {
                    terminal: terminal.take(),
                    file: file.take(),
                    language: language.clone(),
                    text: lines.join("\n"),
                });
                open = None;
            } else {
                lines.push(line);
            }
        } else if let Some(rest) = line.strip_prefix("```") {
            open = Some((rest.trim().to_string(), Vec::new()));
        } else if let Some(name) = line.trim().strip_prefix("<!-- terminal:").and_then(|r| r.strip_suffix("-->")) {
            terminal = Some(name.trim().to_string());
        } else if let Some(path) = line.trim().strip_prefix("<!-- file:").and_then(|r| r.strip_suffix("-->")) {
            file = Some(path.trim().to_string());
        }
    }
    assert!(open.is_none(), "an unclosed block in the README");
    found
}

/// Does `line` match `pattern`, where `...` stands for any text?
fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    let line = line.trim_end();
    if parts.len() == 1 {
        return pattern.trim_end() == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1].trim_end());
    if !line.starts_with(first) || line.len() < first.len() + last.len() || !line.ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Where in `lines` (from `from`) the expected block ends, if it is there:
/// each expected line matches the next output line, except that a `...`
/// line skips any number of lines. The block may start anywhere.
fn find_block(expected: &[&str], lines: &[&str], from: usize) -> Option<usize> {
    fn at(expected: &[&str], lines: &[&str], i: usize) -> Option<usize> {
        match expected.split_first() {
            None => Some(i),
            Some((first, rest)) if first.trim() == "..." => (i..=lines.len()).find_map(|j| at(rest, lines, j)),
            Some((first, rest)) => {
                lines.get(i).filter(|line| line_matches(first, line)).and_then(|_| at(rest, lines, i + 1))
            }
        }
    }
    (from..=lines.len()).find_map(|start| at(expected, lines, start))
}

#[test]
fn the_matcher_follows_the_rules_the_readme_relies_on() {
    assert!(line_matches("decision   ...", "decision   019a-b"));
    assert!(line_matches("...firing  -  ...severity=\"high\"...", "abc firing  -  {a=\"b\", severity=\"high\"}"));
    assert!(!line_matches("effect     allow", "effect     deny"));
    assert!(!line_matches("a...b", "ab-extra"));
    assert!(line_matches("ok: ...", "ok: 12 events"));
    let out = ["x", "state      approved", "agent      bot", "p", "q", "review     yes", "z"];
    assert_eq!(find_block(&["state      approved", "agent ...", "...", "review     yes"], &out, 0), Some(6));
    assert_eq!(find_block(&["state      approved", "review     yes"], &out, 0), None);
    assert_eq!(find_block(&["x"], &out, 1), None);
}

/// One terminal of the tour: a bash session and everything it printed.
struct Terminal {
    stdin: tokio::process::ChildStdin,
    child: tokio::process::Child,
    output: Arc<Mutex<String>>,
    /// Lines of output already matched by earlier text blocks.
    matched: usize,
    blocks: usize,
}

impl Terminal {
    async fn open(dir: &Path, env: &[(&str, String)]) -> Terminal {
        let mut command = tokio::process::Command::new("bash");
        command
            .current_dir(dir)
            .env_remove("WARDEN_API_KEY")
            .env("PATH", format!("{}:{}", dir.join("bin").display(), std::env::var("PATH").unwrap_or_default()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("bash runs");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"exec 2>&1\nset -eo pipefail\n").await.unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Terminal { stdin, child, output, matched: 0, blocks: 0 }
    }

    async fn type_block(&mut self, commands: &str) {
        self.blocks += 1;
        let text = format!("{commands}\necho '@@ block {} done'\n", self.blocks);
        self.stdin.write_all(text.as_bytes()).await.unwrap();
    }

    fn printed(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn lines(&self) -> Vec<String> {
        self.printed().lines().filter(|l| !l.starts_with("@@ block")).map(str::to_owned).collect()
    }

    /// Waits until the terminal printed `expected` after what earlier
    /// blocks matched.
    async fn expect(&mut self, name: &str, expected: &str) {
        let expected: Vec<&str> = expected.lines().collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let lines = self.lines();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            if let Some(end) = find_block(&expected, &refs, self.matched) {
                self.matched = end;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "terminal {name} did not print\n{}\n--- it printed ---\n{}",
                expected.join("\n"),
                self.printed()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every block typed has finished, then closes the session.
    async fn finish(self, name: &str) {
        let done = format!("@@ block {} done", self.blocks);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while !self.printed().contains(&done) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "terminal {name} did not finish (a command failed or hangs):\n{}",
                self.printed()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Terminal { stdin, mut child, output, .. } = self;
        drop(stdin);
        let status = child.wait().await.unwrap();
        assert!(status.success(), "terminal {name}: {status}\n{}", output.lock().unwrap());
    }
}

/// Waits until no event has been appended to the audit log for a while:
/// what the services were still delivering has arrived.
async fn settle(stack: &xtask::stack::Stack) {
    let mut last = u64::MAX;
    for _ in 0..50 {
        let size = stack.audit.log.checkpoint().await.map(|c| c.tree_size).unwrap_or(0);
        if size == last {
            return;
        }
        last = size;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_runs_as_written() {
    let root = xtask::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let all = blocks(&readme);

    // The first block: the two commands a newcomer needs.
    let first = &all[0];
    let commands: Vec<&str> = first.text.lines().map(|l| l.split('#').next().unwrap().trim()).collect();
    assert_eq!(commands, ["cargo xtask dev", "cargo test --workspace"], "the README's first block");
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    for command in ["cargo test --workspace", "cargo xtask book"] {
        assert!(readme.contains(command), "the README names {command}");
        assert!(ci.lines().any(|l| l.trim() == command), ".ci/run runs the README's {command}");
    }
    // `wardenctl`'s default addresses are where `cargo xtask dev` listens.
    let help = std::process::Command::new(warden_tests::wardenctl::path()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for (listen, name) in [
        (warden_policy_engine::PolicyEngineConfig::default().listen, "policy engine"),
        (warden_audit::AuditConfig::default().listen, "audit"),
        (warden_approval::ApprovalConfig::default().listen, "approval"),
        (warden_alerting::AlertingConfig::default().listen, "alerting"),
        (format!("{}/mcp", warden_mcp_gateway::GatewayConfig::default().mcp_listen), "mcp gateway"),
    ] {
        assert!(help.contains(&format!("[default: http://{listen}]")), "{name}: {listen} not in\n{help}");
    }

    // Blocks that show a file show it as it is.
    for block in all.iter().filter(|b| b.file.is_some()) {
        let path = block.file.as_deref().unwrap();
        let content = std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(block.text.trim_end(), content.trim_end(), "the README shows {path} otherwise than it is");
    }

    // Every other block is a step of the tour, in a named terminal.
    let tour: Vec<&Block> = all[1..].iter().filter(|b| b.file.is_none()).collect();
    for block in &tour {
        assert!(block.terminal.is_some(), "a README block names no terminal, so no test runs it:\n{}", block.text);
        assert!(["sh", "text"].contains(&block.language.as_str()), "a tour block is sh or text: {block:?}");
    }

    let scratch = scratch_with_cargo();
    std::os::unix::fs::symlink(root.join("examples"), scratch.path().join("examples")).unwrap();
    run_tour(&tour, scratch.path()).await;
}

/// A scratch directory with `bin/cargo`: `cargo` as the tours use it, on
/// what this test run built.
fn scratch_with_cargo() -> tempfile::TempDir {
    let scratch = tempfile::tempdir().unwrap();
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let shim = bin.join("cargo");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n# `cargo` as the README's tour uses it, on what this test run built.\n\
             if [ \"$1 $2 $3 $4 $5\" = \"run -q -p wardenctl --\" ]; then shift 5; exec '{}' \"$@\"; fi\n\
             echo \"the README test runs only 'cargo run -q -p wardenctl -- ...', not: cargo $*\" >&2\nexit 97\n",
            warden_tests::wardenctl::path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    scratch
}

/// Runs `tour` in `dir` against `cargo xtask dev`'s stack (its data in
/// `dir/warden-data`), one bash session per terminal.
async fn run_tour(tour: &[&Block], dir: &Path) {
    let root = xtask::workspace_root();
    let telemetry = warden_telemetry::TelemetryConfig::default();
    let stack = xtask::stack::Stack::start(
        &dir.join("warden-data"),
        &root.join("examples/policies"),
        telemetry,
        xtask::stack::Ports::Any,
    )
    .await
    .unwrap();
    let env = stack.wardenctl_env();

    let mut terminals: Vec<(String, Terminal)> = Vec::new();
    for block in tour {
        let name = block.terminal.clone().unwrap();
        let index = match terminals.iter().position(|(n, _)| *n == name) {
            Some(index) => index,
            None => {
                terminals.push((name.clone(), Terminal::open(dir, &env).await));
                terminals.len() - 1
            }
        };
        let terminal = &mut terminals[index].1;
        match block.language.as_str() {
            "sh" => {
                settle(&stack).await;
                terminal.type_block(&block.text).await;
            }
            _ => terminal.expect(&name, &block.text).await,
        }
    }
    for (name, terminal) in terminals {
        terminal.finish(&name).await;
    }
    stack.shutdown().await;
}

/// Copies the tree at `from` to `to` (files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The book's Python steps (`docs/src/clients.md`, the blocks that name a
/// terminal), as written, in a fresh copy of what they use: the Python
/// client installed from `clients/python` into a new virtual environment
/// with the system's `python3`, the example agent run against `cargo xtask
/// dev`'s stack, a manager approving with `wardenctl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_book_s_python_steps_run_as_written_in_a_fresh_copy() {
    if warden_tests::python::interpreter().is_none() {
        return;
    }
    let root = xtask::workspace_root();
    let book = std::fs::read_to_string(root.join("docs/src/clients.md")).unwrap();
    let all = blocks(&book);
    let tour: Vec<&Block> = all.iter().filter(|b| b.terminal.is_some()).collect();
    assert!(tour.iter().any(|b| b.text.contains("pip install")), "the Python steps name no terminal");
    let scratch = scratch_with_cargo();
    for part in ["clients/python", "proto", "examples"] {
        copy_tree(&root.join(part), &scratch.path().join(part));
    }
    // A copy, not the working tree: no build output of an earlier install.
    let _ = std::fs::remove_dir_all(scratch.path().join("clients/python/build"));
    run_tour(&tour, scratch.path()).await;
}
