//! `wardenctl` piped into a reader that stops early, as `wardenctl ... |
//! head` does: the process ends quietly on the closed pipe.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

#[test]
fn output_into_a_closed_pipe_ends_quietly_without_a_panic() {
    // The reading end is closed before wardenctl writes anything, so its
    // first write meets a broken pipe however fast the machine is.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_wardenctl"))
        .args(["completions", "bash"])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "wardenctl panicked on a closed pipe: {stderr}");
    assert_eq!(output.status.signal(), Some(13), "ended by SIGPIPE, as a Unix tool does: {:?}", output.status);
}
