//! The policy engine's side of approvals: open a request when a decision
//! requires approval, and spend a granted one when an agent comes back
//! with its id. Calls go through the resilience pipeline with this
//! service's outbound identity; when the approval service cannot answer,
//! the decision is a deny (never an allow).

use std::time::Duration;

use warden_proto::approval::v1 as pb;
use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use warden_proto::policy::v1 as policy;
use warden_resilience::grpc::{ResilienceLayer, ResilientService};
use warden_resilience::{Backoff, BreakerConfig, BreakerRegistry, Pipeline, RetryPolicy};

type Channel = tonic::service::interceptor::InterceptedService<
    ResilientService<tonic::transport::Channel>,
    warden_auth::CallCredentials,
>;

#[derive(Debug, Clone)]
pub struct ApprovalClient {
    client: ApprovalServiceClient<Channel>,
}

/// What the policy engine does with a decision that requires approval.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A request is open (or was already): the agent waits on this id.
    Opened(String),
    /// The granted approval was spent: allow, for this reason (naming the
    /// approval and its approvers). `recorded`: the decision event sent
    /// with the redemption was committed with it.
    Redeemed { reason: String, recorded: bool },
    /// Not redeemed: deny, for this reason.
    Refused(String),
    /// The approval service did not answer (deny, for this reason). It may
    /// have spent the grant and recorded the decision event all the same.
    Unanswered(String),
}

fn action(action: &policy::Action) -> pb::Action {
    pb::Action {
        r#type: action.r#type.clone(),
        resource: action.resource.clone(),
        estimated_cost: action.estimated_cost,
        params: action.params.clone(),
    }
}

impl ApprovalClient {
    pub fn new(url: &str, identity: &warden_auth::ClientIdentity) -> Result<ApprovalClient, String> {
        let channel = identity.endpoint(url)?.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true).connect_lazy();
        let breaker_name = format!("warden-approval:{url}");
        let breaker = BreakerRegistry::global().get_or_create(&breaker_name, || BreakerConfig {
            open_duration: Duration::from_millis(500),
            ..BreakerConfig::default()
        });
        let pipeline = Pipeline::builder(breaker_name)
            .retry(RetryPolicy {
                max_attempts: 3,
                deadline: Some(Duration::from_secs(2)),
                backoff: Backoff::exponential(Duration::from_millis(20), Duration::from_millis(200)),
            })
            .breaker(breaker)
            .timeout(Duration::from_secs(1))
            .build();
        let stack = tower::ServiceBuilder::new().layer(ResilienceLayer::new(pipeline)).service(channel);
        Ok(ApprovalClient {
            client: ApprovalServiceClient::new(tonic::service::interceptor::InterceptedService::new(
                stack,
                identity.credentials()?,
            )),
        })
    }

    /// Opens (or finds the pending) request for this decision.
    pub async fn open(
        &self,
        request: &policy::EvaluateRequest,
        rules: Vec<String>,
        reasons: Vec<String>,
        requested_by: &str,
    ) -> Outcome {
        let agent_id = request.agent.as_ref().map(|a| a.id.clone()).unwrap_or_default();
        let create = pb::CreateApprovalRequest {
            idempotency_key: String::new(),
            agent_id,
            action: request.action.as_ref().map(action),
            correlation_id: request.correlation_id.clone(),
            rules,
            reasons,
            requested_by: requested_by.to_owned(),
        };
        match self.client.clone().create_approval(create).await {
            Ok(approval) => Outcome::Opened(approval.into_inner().id),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot open an approval request");
                Outcome::Refused(format!(
                    "approval required, but the approval service is unavailable ({}); denying",
                    status.message()
                ))
            }
        }
    }

    /// Spends `approval_id` for this exact agent and action, on decision
    /// `decision_id`, whose encoded `policy_evaluation` event (if any) the
    /// approval service commits with the redemption.
    pub async fn redeem(
        &self,
        approval_id: &str,
        decision_id: &str,
        request: &policy::EvaluateRequest,
        decision: Vec<u8>,
    ) -> Outcome {
        let redeem = pb::RedeemRequest {
            id: approval_id.to_owned(),
            agent_id: request.agent.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
            action: request.action.as_ref().map(action),
            decision_id: decision_id.to_owned(),
            decision,
        };
        match self.client.clone().redeem(redeem).await {
            Ok(response) => {
                let response = response.into_inner();
                if response.redeemed {
                    // An approval service that names no reason: say who approved.
                    let reason = if response.reason.is_empty() {
                        format!("approved by {} (approval {approval_id})", response.approvers.join(", "))
                    } else {
                        response.reason
                    };
                    Outcome::Redeemed { reason, recorded: response.decision_recorded }
                } else {
                    Outcome::Refused(format!("approval {approval_id}: {}", response.reason))
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot redeem an approval");
                Outcome::Unanswered(format!(
                    "approval {approval_id} could not be checked: the approval service is unavailable ({}); denying",
                    status.message()
                ))
            }
        }
    }
}
