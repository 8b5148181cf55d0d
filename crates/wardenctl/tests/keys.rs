//! `wardenctl keys` as an operator runs it: the token is printed once, the
//! file holds its digest, and a revoked key is marked for every service.

use std::process::Command;

use warden_auth::{KeyFile, KeySet};

fn wardenctl(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wardenctl")).args(args).output().unwrap();
    (output.status.success(), String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
}

#[test]
fn create_list_and_revoke_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let file_arg = file.to_str().unwrap();
    let (ok, token, _) = wardenctl(&[
        "keys",
        "create",
        "--principal",
        "support-bot",
        "--kind",
        "agent",
        "--roles",
        "agent",
        "--file",
        file_arg,
    ]);
    assert!(ok);
    let token = token.trim().to_owned();
    assert!(token.starts_with("wdn_"), "{token}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&token) && text.contains("sha256:"), "the file must hold a digest only");
    let (set, problems) = KeySet::new(&KeyFile::parse(&text).unwrap(), None);
    assert!(problems.is_empty());
    let principal = set.verify(&token, chrono::Utc::now()).unwrap();
    assert_eq!(principal.id, "support-bot");

    let (ok, listing, _) = wardenctl(&["keys", "list", "--file", file_arg]);
    let id = warden_auth::api_key::split_token(&token).unwrap().0.to_owned();
    assert!(ok && listing.contains(&id) && listing.contains("active"), "{listing}");

    let (ok, _, _) = wardenctl(&["keys", "revoke", &id, "--file", file_arg]);
    assert!(ok);
    let (set, _) = KeySet::new(&KeyFile::load(&file).unwrap(), None);
    assert!(set.verify(&token, chrono::Utc::now()).is_err());
    let (_, listing, _) = wardenctl(&["keys", "list", "--file", file_arg, "-o", "json"]);
    assert!(listing.contains("\"revoked\": true"), "{listing}");

    let (ok, _, error) = wardenctl(&["keys", "revoke", "nope", "--file", file_arg]);
    assert!(!ok && error.contains("no key nope"), "{error}");
    let (ok, _, error) = wardenctl(&["keys", "create", "--principal", "x", "--kind", "robot", "--file", file_arg]);
    assert!(!ok && error.contains("--kind"), "{error}");
}
