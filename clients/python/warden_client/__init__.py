"""Warden's Python client: ask before an agent acts.

    from warden_client import Warden

    warden = Warden()                        # WARDEN_ADDR, WARDEN_API_KEY, ...
    decision = warden.evaluate("support-bot", "issue_refund", resource="order/1234", params={"amount": 150})
    if decision.requires_approval:
        outcome = warden.wait_for_approval(decision.approval_id, timeout=300)
        if outcome.approved:
            decision = warden.evaluate(..., approval_id=decision.approval_id)
    if decision.allowed:
        ...  # act
        warden.record_action("support-bot", "issue_refund", status="success", duration=0.2,
                             decision_id=decision.decision_id)

Fails closed, as the Rust SDK does: when the policy engine cannot answer
(unreachable, overloaded, too slow) `evaluate` returns a deny whose reason
says so, unless the caller chose ``when_unavailable="allow"``. A refused
caller (no or a bad key, another agent's name) and an invalid request are
errors (``Refused``, ``InvalidRequest``), not outages: they raise.

Addresses mean what they mean to every Warden tool: ``host:port``, or a
URL with ``http://`` (plain) or ``https://`` (TLS, the system's CAs).
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from warden.approval.v1 import approval_pb2, approval_pb2_grpc
from warden.audit.v1 import audit_pb2, audit_pb2_grpc
from warden.policy.v1 import policy_pb2, policy_pb2_grpc

__all__ = [
    "Warden",
    "Decision",
    "ApprovalOutcome",
    "Refused",
    "InvalidRequest",
    "channel",
    "policy_pb2",
    "approval_pb2",
    "audit_pb2",
]

Effect = Literal["allow", "deny", "require_approval"]

_EFFECTS: dict[int, Effect] = {
    policy_pb2.EFFECT_ALLOW: "allow",
    policy_pb2.EFFECT_DENY: "deny",
    policy_pb2.EFFECT_REQUIRE_APPROVAL: "require_approval",
}

# Codes that say the engine could not answer (an outage: fail closed)
# rather than that the request or the caller is wrong.
_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
}


class Refused(Exception):
    """The service refused the caller: no or a bad credential
    (UNAUTHENTICATED), a missing role or another agent's name
    (PERMISSION_DENIED). Fix the credential; retrying will not help."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidRequest(Exception):
    """The request itself is wrong (INVALID_ARGUMENT); the message names the fields."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Decision:
    effect: Effect
    reasons: list[str]
    decision_id: str | None = None
    approval_id: str | None = None
    matched_rules: list[str] = field(default_factory=list)
    shadow_rules: list[str] = field(default_factory=list)
    policy_version: str | None = None
    # "policy_engine": the engine decided (and logged) it; "unavailable":
    # it could not, and the client applied `when_unavailable`.
    source: Literal["policy_engine", "unavailable"] = "policy_engine"

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    @property
    def requires_approval(self) -> bool:
        return self.effect == "require_approval"


@dataclass(frozen=True)
class ApprovalOutcome:
    """How waiting ended: ``state`` is "approved", "denied", "expired",
    "cancelled", "redeemed", or "pending" when the wait ran out."""

    state: str
    approval: Any | None = None

    @property
    def approved(self) -> bool:
        return self.state == "approved"


def channel(addr: str) -> grpc.Channel:
    """A channel to an address as every Warden tool takes it."""
    addr = addr.strip()
    if not addr:
        raise ValueError("an empty address: give host:port or http(s)://host:port")
    scheme, sep, rest = addr.partition("://")
    if not sep:
        return grpc.insecure_channel(addr)
    if scheme == "http" and rest:
        return grpc.insecure_channel(rest.rstrip("/"))
    if scheme == "https" and rest:
        return grpc.secure_channel(rest.rstrip("/"), grpc.ssl_channel_credentials())
    raise ValueError(f"bad address {addr}: the scheme must be http:// or https:// (or none: host:port), not {scheme}://")


def _struct(params: Mapping[str, Any] | None) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    if params:
        value.update(dict(params))
    return value


def _state(state: int) -> str:
    return approval_pb2.State.Name(state).removeprefix("STATE_").lower()


class Warden:
    """A client of the policy engine, the approval service and the audit
    service, with the agent's credential.

    Defaults come from the environment as for ``wardenctl``:
    ``WARDEN_ADDR`` (``127.0.0.1:50051``), ``WARDEN_APPROVAL_ADDR``
    (``:50053``), ``WARDEN_AUDIT_ADDR`` (``:50052``), ``WARDEN_API_KEY``.
    ``attempt_timeout`` bounds one attempt at a decision, ``attempts``
    within ``deadline`` seconds, as the Rust SDK (0.25 s, 3, 1 s).
    """

    def __init__(
        self,
        addr: str | None = None,
        *,
        approval_addr: str | None = None,
        audit_addr: str | None = None,
        api_key: str | None = None,
        attempt_timeout: float = 0.25,
        attempts: int = 3,
        deadline: float = 1.0,
        when_unavailable: Literal["deny", "allow"] = "deny",
    ):
        if when_unavailable not in ("deny", "allow"):
            raise ValueError("when_unavailable is 'deny' or 'allow'")
        env = os.environ
        self._policy = policy_pb2_grpc.PolicyServiceStub(channel(addr or env.get("WARDEN_ADDR") or "127.0.0.1:50051"))
        self._approvals = approval_pb2_grpc.ApprovalServiceStub(
            channel(approval_addr or env.get("WARDEN_APPROVAL_ADDR") or "127.0.0.1:50053")
        )
        self._audit = audit_pb2_grpc.AuditServiceStub(
            channel(audit_addr or env.get("WARDEN_AUDIT_ADDR") or "127.0.0.1:50052")
        )
        key = api_key if api_key is not None else env.get("WARDEN_API_KEY", "")
        self._metadata = [("authorization", f"Bearer {key}")] if key else []
        self._attempt_timeout = attempt_timeout
        self._attempts = max(1, attempts)
        self._deadline = deadline
        self._when_unavailable = when_unavailable

    # === decisions ===

    def evaluate(
        self,
        agent: str,
        action: str,
        *,
        resource: str = "",
        params: Mapping[str, Any] | None = None,
        cost: float = 0.0,
        confidence: float = 1.0,
        roles: Sequence[str] = (),
        correlation_id: str = "",
        approval_id: str = "",
    ) -> Decision:
        """Asks whether ``agent`` may take ``action``. Never raises for an
        outage: the answer is then a deny (or an allow, if so configured)
        with ``source == "unavailable"``."""
        request = policy_pb2.EvaluateRequest(
            agent=policy_pb2.Agent(id=agent, confidence=confidence, roles=list(roles)),
            action=policy_pb2.Action(type=action, resource=resource, estimated_cost=cost, params=_struct(params)),
            correlation_id=correlation_id,
            approval_id=approval_id,
        )
        started = time.monotonic()
        last: grpc.RpcError | None = None
        for attempt in range(self._attempts):
            left = self._deadline - (time.monotonic() - started)
            if attempt > 0 and left <= 0:
                break
            try:
                response = self._policy.Evaluate(
                    request, metadata=self._metadata, timeout=min(self._attempt_timeout, max(left, 0.01))
                )
                return Decision(
                    effect=_EFFECTS.get(response.effect, "deny"),
                    reasons=list(response.reasons),
                    decision_id=response.decision_id or None,
                    approval_id=response.approval_id or None,
                    matched_rules=list(response.matched_rules),
                    shadow_rules=list(response.shadow_rules),
                    policy_version=response.policy_version or None,
                )
            except grpc.RpcError as error:
                code = error.code()
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise Refused(code, error.details() or "") from None
                if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
                    raise InvalidRequest(error.details() or "") from None
                if code not in _UNAVAILABLE:
                    raise
                last = error
                time.sleep(min(0.02 * (2**attempt), 0.2))
        why = f"policy engine unavailable: {last.code().name if last else 'no answer'}"
        if self._when_unavailable == "allow":
            return Decision("allow", [f"{why}; allowing, as configured"], source="unavailable")
        return Decision("deny", [why], source="unavailable")

    # === approvals ===

    def wait_for_approval(self, approval_id: str, timeout: float) -> ApprovalOutcome:
        """Waits until the request is decided or ``timeout`` seconds pass;
        a broken stream (a restart) is opened again."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return ApprovalOutcome("pending")
            stream = self._approvals.WatchApproval(
                approval_pb2.WatchApprovalRequest(id=approval_id), metadata=self._metadata, timeout=left
            )
            try:
                for approval in stream:
                    if approval.state not in (approval_pb2.STATE_PENDING, approval_pb2.STATE_UNSPECIFIED):
                        return ApprovalOutcome(_state(approval.state), approval)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return ApprovalOutcome("pending")
                if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise Refused(error.code(), error.details() or "") from None
                if error.code() not in _UNAVAILABLE:
                    raise
            time.sleep(0.2)

    # === outcomes ===

    def record_action(
        self,
        agent: str,
        action_type: str,
        *,
        status: Literal["success", "failure"],
        duration: float,
        decision_id: str | None = None,
        correlation_id: str = "",
        cost: float = 0.0,
        cost_type: str | None = None,
        error_class: str | None = None,
    ) -> int:
        """Records what an action did (``action_completed``) in the audit
        log; returns its sequence number. With ``decision_id`` (the decision
        that allowed it) a retry records it once."""
        if status not in ("success", "failure"):
            raise ValueError("status is 'success' or 'failure'")
        payload: dict[str, Any] = {
            "action_type": action_type,
            "status": status,
            "duration_seconds": float(duration),
            "cost": float(cost),
        }
        if cost_type:
            payload["cost_type"] = cost_type
        if error_class:
            payload["error_class"] = error_class
        if decision_id:
            payload["decision_id"] = decision_id
        now = timestamp_pb2.Timestamp()
        now.FromDatetime(datetime.datetime.now(datetime.timezone.utc))
        event = audit_pb2.AuditEvent(
            event_id=f"action:{decision_id}" if decision_id else "",
            event_type="action_completed",
            time=now,
            correlation_id=correlation_id,
            agent_id=agent,
            payload=_struct(payload),
        )
        try:
            response = self._audit.Append(audit_pb2.AppendRequest(events=[event]), metadata=self._metadata, timeout=10)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise Refused(error.code(), error.details() or "") from None
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidRequest(error.details() or "") from None
            raise
        return response.receipts[0].sequence if response.receipts else 0

    def trail(self, correlation_id: str, *, agent: str = "") -> list[Any]:
        """The audit records of a correlation id (an agent key reads its own)."""
        query = audit_pb2.QueryRequest(correlation_id=correlation_id, agent_id=agent, page_size=1000)
        return list(self._audit.Query(query, metadata=self._metadata, timeout=10).records)
