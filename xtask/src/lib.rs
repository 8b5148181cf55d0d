//! What `cargo xtask` shares with the workspace's tests: the development
//! stack `cargo xtask dev` runs ([`stack::Stack`]), so the README's tour is
//! tested against exactly what a newcomer starts.

pub mod book;
pub mod example_tools;
pub mod stack;

use std::path::PathBuf;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_owned()
}
