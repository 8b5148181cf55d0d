//! The Python client (`clients/python`, installed by `.ci/run` as its users
//! install it) against a real policy engine: its answers, its fail-closed
//! default when the engine cannot answer, and its errors for a refused
//! caller and a bad request.

use warden_tests::Sandbox;
use warden_tests::identity;

const POLICY: &str = r#"
rules:
  - name: big-refunds
    actions: [issue_refund]
    when: "action.params.amount > 100.0"
    effect: require_approval
    reason: "refunds over 100 need a manager"
  - name: rest
    effect: allow
"#;

const SCRIPT: &str = r#"
import os, sys
from warden_client import Warden, Refused, InvalidRequest

engine, key, stranger = sys.argv[1], sys.argv[2], sys.argv[3]
warden = Warden(engine, api_key=key)

small = warden.evaluate("support-bot", "issue_refund", resource="order/1", params={"amount": 20})
assert small.allowed and small.source == "policy_engine" and small.decision_id, small
big = warden.evaluate("support-bot", "issue_refund", params={"amount": 150}, correlation_id="t-1")
assert big.requires_approval and big.reasons == ["refunds over 100 need a manager"], big

# Nobody answers there: a deny that says why, or an allow only if chosen.
down = Warden("127.0.0.1:1", api_key=key).evaluate("support-bot", "issue_refund")
assert down.effect == "deny" and down.source == "unavailable", down
assert down.reasons[0].startswith("policy engine unavailable"), down
assert Warden("http://127.0.0.1:1", api_key=key, when_unavailable="allow").evaluate("support-bot", "x").allowed

for bad_key, agent in [("wdn_nope", "support-bot"), (stranger, "support-bot"), ("", "support-bot")]:
    try:
        Warden(engine, api_key=bad_key).evaluate(agent, "issue_refund")
        raise AssertionError(f"{bad_key!r} was not refused")
    except Refused as refused:
        assert refused.code.name in ("UNAUTHENTICATED", "PERMISSION_DENIED"), refused
try:
    warden.evaluate("support-bot", "issue_refund", confidence=2.0)
    raise AssertionError("confidence 2 was accepted")
except InvalidRequest as invalid:
    assert "agent.confidence" in invalid.message, invalid
try:
    Warden("ftp://127.0.0.1:1")
    raise AssertionError("ftp:// was accepted")
except ValueError as error:
    assert "http:// or https://" in str(error), error
print("ok")
"#;

#[tokio::test]
async fn the_python_client_answers_fails_closed_and_names_what_is_wrong() {
    let Some(python) = warden_tests::python::interpreter() else { return };
    let sandbox = Sandbox::new(&[("p.yaml", POLICY)]);
    let keys = identity::keys(sandbox.data.path());
    let engine = warden_tests::start(sandbox.secured_config(&keys, "", "")).await;
    let output = tokio::process::Command::new(&python)
        .args(["-c", SCRIPT, &engine.url(), keys.token("agent"), keys.token("approver")])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "{stdout}{stderr}\n(is the client installed? pip install ./clients/python)"
    );
    engine.shutdown().await;
}
