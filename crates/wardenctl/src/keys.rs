//! `wardenctl keys`: API keys files. The file is what every service reads
//! and re-reads, so a revoked key stops working everywhere within the
//! services' reload interval.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use warden_auth::api_key::{KeyFile, create_key};
use warden_auth::{Kind, Secret};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key. Prints the token once (keep it) and adds the key's
    /// digest to the keys file (or prints the entry with --print-only).
    Create {
        /// The principal the key authenticates, e.g. support-bot.
        #[arg(long)]
        principal: String,
        /// agent, human or service.
        #[arg(long, default_value = "agent")]
        kind: String,
        /// Roles, comma separated (agent, approver, admin, auditor, service, ...).
        #[arg(long, value_delimiter = ',', default_value = "agent")]
        roles: Vec<String>,
        /// Agent id globs the principal may act as (default: its own id).
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// The key expires after this long, e.g. 90d.
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
        /// HMAC pepper the services use (`key_pepper`): a value or env:/file: reference.
        #[arg(long, env = "WARDEN_KEY_PEPPER")]
        pepper: Option<String>,
        /// A note stored with the key.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        file: FileArg,
        /// Print the entry instead of adding it to the file.
        #[arg(long)]
        print_only: bool,
    },
    /// List the keys in the file (never secrets: the file holds none).
    List {
        #[command(flatten)]
        file: FileArg,
    },
    /// Mark a key revoked; services refuse it after their next reload.
    Revoke {
        /// The key id (the token's middle part, or `wardenctl keys list`).
        id: String,
        #[command(flatten)]
        file: FileArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct FileArg {
    /// The keys file the services read.
    #[arg(long = "file", env = "WARDEN_KEYS_FILE", default_value = "warden-data/keys.toml")]
    path: PathBuf,
}

fn read(path: &Path) -> Result<KeyFile, String> {
    if path.exists() { KeyFile::load(path) } else { Ok(KeyFile::default()) }
}

/// Writes atomically (temporary file, then rename), so a service never
/// reads half a file.
fn write(path: &Path, file: &KeyFile) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    let text = format!("# Warden API keys: digests only, managed with `wardenctl keys`.\n{}", file.to_toml());
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

fn pepper_value(pepper: Option<String>) -> Result<Option<Secret>, String> {
    let Some(text) = pepper.filter(|p| !p.is_empty()) else { return Ok(None) };
    if let Some(name) = text.strip_prefix("env:") {
        return std::env::var(name).map(|v| Some(Secret::new(v))).map_err(|_| format!("{name} is not set"));
    }
    if let Some(path) = text.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|v| Some(Secret::new(v.trim_end_matches(['\n', '\r']))))
            .map_err(|e| format!("cannot read {path}: {e}"));
    }
    Ok(Some(Secret::new(text)))
}

pub fn run(command: KeysCommand, json: bool) -> Result<(), String> {
    match command {
        KeysCommand::Create { principal, kind, roles, agents, expires_in, pepper, comment, file, print_only } => {
            let kind =
                Kind::parse(&kind).ok_or_else(|| format!("--kind {kind:?}: expected agent, human or service"))?;
            if principal.is_empty() {
                return Err("--principal must not be empty".into());
            }
            let not_after =
                expires_in.map(|d| chrono::Utc::now() + chrono::Duration::from_std(d.into()).unwrap_or_default());
            let pepper = pepper_value(pepper)?;
            let mut key = create_key(&principal, kind, roles, agents, not_after, pepper.as_ref());
            key.entry.comment = comment;
            let entry = KeyFile { keys: vec![key.entry.clone()] }.to_toml();
            if print_only {
                println!("# add to the keys file:\n{entry}");
            } else {
                let mut keys = read(&file.path)?;
                keys.keys.push(key.entry.clone());
                write(&file.path, &keys)?;
                eprintln!("added key {} for {principal} to {}", key.entry.id, file.path.display());
            }
            eprintln!("the token is shown once; store it in the caller's secret store:");
            if json {
                let created =
                    serde_json::json!({"id": key.entry.id, "principal": principal, "token": key.token.expose()});
                println!("{}", serde_json::to_string_pretty(&created).expect("json"));
            } else {
                println!("{}", key.token.expose());
            }
            Ok(())
        }
        KeysCommand::List { file } => {
            let keys = read(&file.path)?;
            if json {
                let rows: Vec<_> = keys
                    .keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id, "principal": k.principal, "kind": k.kind.as_str(), "roles": k.roles,
                            "agents": k.agents, "not_after": k.not_after, "revoked": k.revoked, "comment": k.comment,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows).expect("json"));
                return Ok(());
            }
            println!("{:<14} {:<24} {:<8} {:<20} {:<8} NOT AFTER", "ID", "PRINCIPAL", "KIND", "ROLES", "STATE");
            for k in &keys.keys {
                let expired = k.not_after.is_some_and(|t| t < chrono::Utc::now());
                let state = if k.revoked {
                    "revoked"
                } else if expired {
                    "expired"
                } else {
                    "active"
                };
                let not_after = k.not_after.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
                println!(
                    "{:<14} {:<24} {:<8} {:<20} {:<8} {not_after}",
                    k.id,
                    k.principal,
                    k.kind.as_str(),
                    k.roles.join(","),
                    state
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { id, file } => {
            let mut keys = read(&file.path)?;
            let key = keys
                .keys
                .iter_mut()
                .find(|k| k.id == id)
                .ok_or_else(|| format!("no key {id} in {}", file.path.display()))?;
            key.revoked = true;
            write(&file.path, &keys)?;
            eprintln!("revoked key {id}; services refuse it after their next reload");
            if json {
                println!("{}", serde_json::json!({"revoked": id}));
            }
            Ok(())
        }
    }
}
