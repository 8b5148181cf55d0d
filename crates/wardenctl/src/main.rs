//! `wardenctl`: Warden's command-line client, in the style of `amtool` and
//! `kubectl`.
//!
//! - `keys create|list|revoke`: API keys files.
//! - `approvals list|show|approve|deny|watch`: review what agents asked for.
//! - `killswitch engage|release|list`: stop one agent, or all.
//! - `audit query|export|forget`: read the log, forget a subject.
//! - `audit checkpoint|verify|proof`: check the audit log; proofs are
//!   verified here, against the signed checkpoint, so an auditor need not
//!   trust the server.
//! - `policy validate|reload|show`: policies on a running engine.
//! - `mcp tools|call`: the MCP gateway as an agent sees it.
//! - `completions SHELL`: shell completion scripts.
//!
//! Addresses and the credential come from flags or the environment
//! (`WARDEN_ADDR`, `WARDEN_AUDIT_ADDR`, `WARDEN_APPROVAL_ADDR`,
//! `WARDEN_API_KEY`, `WARDEN_CA`) or a profile file (`--profile`). Exit codes: 0 success; 1 the request
//! failed or was refused; 2 bad usage; 3 a proof or the log did not verify.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod alerts;
mod dead_letters;
mod evaluate;
mod keys;
mod mcp;
mod remote;

#[derive(Debug, Parser)]
#[command(name = "wardenctl", version, about = "Warden's command-line client")]
struct Cli {
    #[command(flatten)]
    remote: remote::RemoteArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// API keys: create, list, revoke.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Ask for a decision as an agent does (with --wait, its whole workflow:
    /// wait for the review, then ask again with the approval).
    Evaluate(evaluate::EvaluateArgs),
    /// Approval requests: list, show, approve, deny, watch.
    Approvals {
        #[command(subcommand)]
        command: remote::ApprovalsCommand,
    },
    /// Alerts: list, rules, silence, silences, expire, test-route, reload.
    Alerts {
        #[command(subcommand)]
        command: alerts::AlertsCommand,
    },
    /// Kill switches: engage, release, list.
    Killswitch {
        #[command(subcommand)]
        command: remote::KillSwitchCommand,
    },
    /// The audit log: query, export, forget, checkpoint, verify, proof.
    Audit {
        #[command(subcommand)]
        command: remote::AuditCommand,
    },
    /// Policies: test and validate files, replay decisions against them;
    /// reload and show a running engine's.
    Policy {
        #[command(subcommand)]
        command: remote::PolicyCommand,
    },
    /// The MCP gateway as an agent sees it: tools, call.
    Mcp {
        #[command(subcommand)]
        command: mcp::McpCommand,
    },
    /// Dead letters: what a service's receivers refused for good; list, replay.
    DeadLetters {
        #[command(subcommand)]
        command: dead_letters::DeadLettersCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

/// Why a command failed, and the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// The request failed or was refused (exit 1).
    Failed(String),
    /// A proof or the log did not verify (exit 3).
    Unverified(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Failed(message)
    }
}

fn main() -> ExitCode {
    // Output piped into a reader that stops early (`wardenctl ... | head`)
    // ends the process quietly, as for any Unix tool, instead of a panic
    // in `println!` on the broken pipe.
    sigpipe::reset();
    let mut cli = Cli::parse();
    cli.remote = match cli.remote.with_profile() {
        Ok(remote) => remote,
        Err(error) => {
            eprintln!("wardenctl: {error}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Keys { command } => keys::run(command, cli.remote.json()).map_err(Failure::Failed),
        Command::Evaluate(command) => remote::runtime().block_on(evaluate::run(&cli.remote, command)),
        Command::Approvals { command } => remote::runtime().block_on(remote::approvals(&cli.remote, command)),
        Command::Alerts { command } => remote::runtime().block_on(alerts::run(&cli.remote, command)),
        Command::Killswitch { command } => remote::runtime().block_on(remote::killswitch(&cli.remote, command)),
        Command::Audit { command } => remote::runtime().block_on(remote::audit(&cli.remote, command)),
        Command::Policy { command } => remote::runtime().block_on(remote::policy(&cli.remote, command)),
        Command::Mcp { command } => remote::runtime().block_on(mcp::run(&cli.remote, command)),
        Command::DeadLetters { command } => remote::runtime().block_on(dead_letters::run(&cli.remote, command)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "wardenctl", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed(message)) => {
            eprintln!("wardenctl: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Unverified(message)) => {
            eprintln!("wardenctl: NOT VERIFIED: {message}");
            ExitCode::from(3)
        }
    }
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    /// Each command's one-line summary names every verb under it.
    #[test]
    fn summaries_name_every_verb() {
        let cli = super::Cli::command();
        for command in cli.get_subcommands() {
            let about = command.get_about().map(|a| a.to_string()).unwrap_or_default();
            for verb in command.get_subcommands() {
                assert!(
                    about.contains(verb.get_name()),
                    "`wardenctl {}`'s summary ({about:?}) leaves out {}",
                    command.get_name(),
                    verb.get_name()
                );
            }
        }
    }
}
