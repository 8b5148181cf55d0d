//! `wardenctl dead-letters`: what a service's receivers refused for good
//! (the audit service refusing a decision, say), listed, and replayed once
//! the cause is fixed.

use clap::Subcommand;
use warden_proto::deadletter::v1 as dl;
use warden_proto::deadletter::v1::dead_letter_service_client::DeadLetterServiceClient;

use crate::Failure;
use crate::remote::{Output, RemoteArgs, explain, print_json, seconds};

/// The services that deliver, and so keep dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// The policy engine's decision log (`--addr`).
    Policy,
    /// The approval service's outbox (`--approval-addr`).
    Approval,
    /// The alerting service's outbox (`--alerting-addr`).
    Alerting,
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List a service's dead letters, oldest first.
    List {
        /// Whose dead letters.
        #[arg(long, value_enum, default_value = "policy")]
        service: Service,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Put dead letters back in the delivery queue (all, or those named);
    /// one refused again comes back.
    Replay {
        #[arg(long, value_enum, default_value = "policy")]
        service: Service,
        /// The dead letters to replay (as `list` shows them); none: all.
        ids: Vec<String>,
    },
}

pub async fn run(args: &RemoteArgs, command: DeadLettersCommand) -> Result<(), Failure> {
    let service = match &command {
        DeadLettersCommand::List { service, .. } | DeadLettersCommand::Replay { service, .. } => *service,
    };
    let addr = match service {
        Service::Policy => args.addr(),
        Service::Approval => args.approval_addr(),
        Service::Alerting => args.alerting_addr.as_str(),
    };
    let mut client = DeadLetterServiceClient::new(args.channel(addr).await?);
    match command {
        DeadLettersCommand::List { limit, .. } => {
            let listed =
                client.list_dead_letters(dl::ListDeadLettersRequest { limit }).await.map_err(explain)?.into_inner();
            if args.output == Output::Json {
                print_json(serde_json::json!({
                    "total": listed.total,
                    "dead_letters": listed.dead_letters.iter().map(|d| serde_json::json!({
                        "id": d.id, "kind": d.kind, "event_id": d.event_id, "event_type": d.event_type,
                        "reason": d.reason, "dead_at": seconds(&d.dead_at), "bytes": d.bytes,
                    })).collect::<Vec<_>>(),
                }));
                return Ok(());
            }
            println!("{} dead letter(s)", listed.total);
            for d in &listed.dead_letters {
                println!(
                    "{}  {}  {} {} ({} bytes)\n    {}",
                    d.id,
                    seconds(&d.dead_at),
                    d.event_type,
                    d.event_id,
                    d.bytes,
                    d.reason
                );
            }
            Ok(())
        }
        DeadLettersCommand::Replay { ids, .. } => {
            let replayed =
                client.replay_dead_letters(dl::ReplayDeadLettersRequest { ids }).await.map_err(explain)?.into_inner();
            if args.output == Output::Json {
                print_json(serde_json::json!({ "requeued": replayed.requeued }));
            } else {
                println!("{} dead letter(s) back in the delivery queue", replayed.requeued);
            }
            Ok(())
        }
    }
}
