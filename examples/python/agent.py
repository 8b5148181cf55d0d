"""A Warden agent in Python: the seeds' workflow with the Python client
(`clients/python`, the `warden_client` package).

It asks the policy engine before acting, waits for a person when approval
is required, acts only when allowed, records what the action did, and
reads its own audit trail by correlation id.

Install the client once (from the repository root), then run it (the key
is the agent's API key):

    pip install ./clients/python
    WARDEN_API_KEY=$(cat warden-data/dev-keys/support-bot.key) \\
        python examples/python/agent.py --amount 150
"""

import argparse
import sys
import time
import uuid

from warden_client import Warden


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

    # Addresses and the key from WARDEN_ADDR, WARDEN_APPROVAL_ADDR,
    # WARDEN_AUDIT_ADDR and WARDEN_API_KEY, as for wardenctl.
    warden = Warden()
    correlation_id = args.correlation_id or f"py-{uuid.uuid4()}"
    ask = dict(
        resource=args.order,
        params={"amount": args.amount},
        cost=args.amount,
        confidence=0.95,
        correlation_id=correlation_id,
    )
    decision = warden.evaluate(args.agent, "issue_refund", **ask)
    print(f"decision {decision.decision_id}: EFFECT_{decision.effect.upper()} {decision.reasons}")
    if decision.source == "unavailable":
        # Fail closed: no answer means no action.
        print("policy engine unavailable; not acting")
        return 2

    approved = False
    if decision.requires_approval and decision.approval_id:
        print(f"waiting for approval {decision.approval_id}")
        outcome = warden.wait_for_approval(decision.approval_id, timeout=args.wait)
        print(f"approval {decision.approval_id}: STATE_{outcome.state.upper()}")
        if not outcome.approved:
            return 3
        decision = warden.evaluate(args.agent, "issue_refund", approval_id=decision.approval_id, **ask)
        approved = True
        print(f"decision {decision.decision_id}: EFFECT_{decision.effect.upper()} {decision.reasons}")

    if not decision.allowed:
        print("not allowed; not acting")
        return 4

    started = time.monotonic()
    print(f"refunding {args.amount} on {args.order}")  # the action itself
    warden.record_action(
        args.agent,
        "issue_refund",
        status="success",
        duration=time.monotonic() - started,
        cost=args.amount,
        decision_id=decision.decision_id,
        correlation_id=correlation_id,
    )

    # The trail arrives asynchronously (decisions through the engine's
    # outbox, the approval's steps through the approval service's).
    wanted = {"policy_evaluation", "action_completed"}
    if approved:
        wanted |= {"approval_requested", "approval_granted", "approval_redeemed"}
    deadline = time.monotonic() + 15
    while True:
        trail = warden.trail(correlation_id)
        types = {record.event.event_type for record in trail}
        if wanted <= types or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"audit trail for {correlation_id}:")
    for record in trail:
        print(f"  #{record.sequence} {record.event.event_type} by {record.event.actor}")
    return 0 if wanted <= types else 5


if __name__ == "__main__":
    sys.exit(main())
