"""A Warden agent in Python: the seeds' workflow against the gRPC contracts.

It asks the policy engine before acting, waits for a person when approval
is required, acts only when allowed, records what the action did, and
reads its own audit trail by correlation id.

Generate the stubs once (from the repository root):

    python -m grpc_tools.protoc -I proto --python_out=examples/python/gen \
        --grpc_python_out=examples/python/gen $(find proto -name '*.proto')

Then run it (addresses are host:port; the key is the agent's API key):

    WARDEN_API_KEY=$(cat warden-data/dev-keys/support-bot.key) \
        python examples/python/agent.py --amount 150
"""

import argparse
import os
import sys
import time
import uuid

sys.path.insert(0, os.environ.get("WARDEN_STUBS", os.path.join(os.path.dirname(__file__), "gen")))

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
from warden.approval.v1 import approval_pb2, approval_pb2_grpc  # noqa: E402
from warden.audit.v1 import audit_pb2, audit_pb2_grpc  # noqa: E402
from warden.policy.v1 import policy_pb2, policy_pb2_grpc  # noqa: E402


def channel(variable: str, default: str) -> grpc.Channel:
    """An address as every Warden tool takes it: host:port, or a URL with
    http:// (plain) or https:// (TLS, the system's CAs)."""
    addr = os.environ.get(variable, "").strip() or default
    scheme, sep, rest = addr.partition("://")
    if not sep:
        return grpc.insecure_channel(addr)
    if scheme == "http":
        return grpc.insecure_channel(rest.rstrip("/"))
    if scheme == "https":
        return grpc.secure_channel(rest.rstrip("/"), grpc.ssl_channel_credentials())
    raise SystemExit(f"{variable}={addr}: the scheme must be http:// or https:// (or none: host:port)")


def main() -> int:
    parser = argparse.ArgumentParser(description="a refund agent governed by Warden")
    parser.add_argument("--agent", default="support-bot")
    parser.add_argument("--amount", type=float, default=150.0)
    parser.add_argument("--order", default="order/1234")
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for a reviewer")
    parser.add_argument(
        "--correlation-id", default="", help="the ticket this request belongs to (a reviewer approves by it)"
    )
    args = parser.parse_args()

    key = os.environ["WARDEN_API_KEY"]
    metadata = [("authorization", f"Bearer {key}")]
    policy = policy_pb2_grpc.PolicyServiceStub(channel("WARDEN_ADDR", "127.0.0.1:50051"))
    approvals = approval_pb2_grpc.ApprovalServiceStub(channel("WARDEN_APPROVAL_ADDR", "127.0.0.1:50053"))
    audit = audit_pb2_grpc.AuditServiceStub(channel("WARDEN_AUDIT_ADDR", "127.0.0.1:50052"))
    correlation_id = args.correlation_id or f"py-{uuid.uuid4()}"

    params = struct_pb2.Struct()
    params.update({"amount": args.amount})
    request = policy_pb2.EvaluateRequest(
        agent=policy_pb2.Agent(id=args.agent, confidence=0.95),
        action=policy_pb2.Action(type="issue_refund", resource=args.order, estimated_cost=args.amount, params=params),
        correlation_id=correlation_id,
    )
    try:
        decision = policy.Evaluate(request, metadata=metadata, timeout=5)
    except grpc.RpcError as error:
        # Fail closed: no answer means no action.
        print(f"policy engine unavailable ({error.code().name}); not acting")
        return 2
    print(f"decision {decision.decision_id}: {policy_pb2.Effect.Name(decision.effect)} {list(decision.reasons)}")

    approved = False
    if decision.effect == policy_pb2.EFFECT_REQUIRE_APPROVAL and decision.approval_id:
        print(f"waiting for approval {decision.approval_id}")
        state = approval_pb2.STATE_PENDING
        stream = approvals.WatchApproval(
            approval_pb2.WatchApprovalRequest(id=decision.approval_id), metadata=metadata, timeout=args.wait
        )
        for approval in stream:
            state = approval.state
            if state != approval_pb2.STATE_PENDING:
                break
        print(f"approval {decision.approval_id}: {approval_pb2.State.Name(state)}")
        if state != approval_pb2.STATE_APPROVED:
            return 3
        request.approval_id = decision.approval_id
        decision = policy.Evaluate(request, metadata=metadata, timeout=5)
        approved = True
        print(f"decision {decision.decision_id}: {policy_pb2.Effect.Name(decision.effect)} {list(decision.reasons)}")

    if decision.effect != policy_pb2.EFFECT_ALLOW:
        print("not allowed; not acting")
        return 4

    started = time.monotonic()
    print(f"refunding {args.amount} on {args.order}")  # the action itself
    outcome = struct_pb2.Struct()
    outcome.update(
        {
            "action_type": "issue_refund",
            "status": "success",
            "duration_seconds": time.monotonic() - started,
            "cost": args.amount,
            "decision_id": decision.decision_id,
        }
    )
    audit.Append(
        audit_pb2.AppendRequest(
            events=[
                audit_pb2.AuditEvent(
                    event_id=f"action:{decision.decision_id}",
                    event_type="action_completed",
                    correlation_id=correlation_id,
                    agent_id=args.agent,
                    payload=outcome,
                )
            ]
        ),
        metadata=metadata,
        timeout=5,
    )

    # The trail arrives asynchronously (decisions through the engine's
    # outbox, the approval's steps through the approval service's).
    wanted = {"policy_evaluation", "action_completed"}
    if approved:
        wanted |= {"approval_requested", "approval_granted", "approval_redeemed"}
    deadline = time.monotonic() + 15
    while True:
        trail = audit.Query(audit_pb2.QueryRequest(correlation_id=correlation_id, page_size=100), metadata=metadata)
        types = {record.event.event_type for record in trail.records}
        if wanted <= types or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"audit trail for {correlation_id}:")
    for record in trail.records:
        print(f"  #{record.sequence} {record.event.event_type} by {record.event.actor}")
    return 0 if wanted <= types else 5


if __name__ == "__main__":
    sys.exit(main())
