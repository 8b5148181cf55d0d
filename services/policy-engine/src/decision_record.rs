//! A decision's `policy_evaluation` audit event, encoded straight to
//! protobuf bytes from the request and response it describes.
//!
//! Building the event as a `prost_types::Struct` (a `BTreeMap` per level,
//! every string cloned) and then encoding it cost about a quarter of the
//! engine's CPU with the decision log on; this writes the same bytes from
//! borrowed values. The audit service decodes them as any `AuditEvent`.

use std::collections::BTreeSet;

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use prost_types::value::Kind;
use warden_contract::bounds::RECORDED_REASONS;
use warden_proto::policy::v1 as pb;

/// A `google.protobuf.Value`, borrowed.
enum Value<'a> {
    Str(&'a str),
    Number(f64),
    List(&'a [String]),
    Struct(Vec<(&'a str, Value<'a>)>),
    /// A value from the request, as the agent sent it.
    Proto(&'a prost_types::Value),
}

fn delimited_len(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

fn write_str(tag: u32, value: &str, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value.as_bytes());
}

fn str_len(tag: u32, value: &str) -> usize {
    key_len(tag) + delimited_len(value.len())
}

/// The length of a `Struct`'s body.
fn struct_len(fields: &[(&str, Value<'_>)]) -> usize {
    fields.iter().map(|(key, value)| key_len(1) + delimited_len(entry_len(key, value))).sum()
}

fn entry_len(key: &str, value: &Value<'_>) -> usize {
    str_len(1, key) + key_len(2) + delimited_len(value.len())
}

fn write_struct(fields: &[(&str, Value<'_>)], buf: &mut Vec<u8>) {
    for (key, value) in fields {
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(entry_len(key, value) as u64, buf);
        write_str(1, key, buf);
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        value.write(buf);
    }
}

impl Value<'_> {
    /// The length of this `Value` message's body.
    fn len(&self) -> usize {
        match self {
            Value::Str(text) => str_len(3, text),
            Value::Number(_) => key_len(2) + 8,
            Value::List(items) => {
                key_len(6) + delimited_len(items.iter().map(|item| key_len(1) + delimited_len(str_len(3, item))).sum())
            }
            Value::Struct(fields) => key_len(5) + delimited_len(struct_len(fields)),
            Value::Proto(value) => value.encoded_len(),
        }
    }

    fn write(&self, buf: &mut Vec<u8>) {
        match self {
            Value::Str(text) => write_str(3, text, buf),
            Value::Number(number) => {
                encode_key(2, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&number.to_le_bytes());
            }
            Value::List(items) => {
                encode_key(6, WireType::LengthDelimited, buf);
                encode_varint(
                    items.iter().map(|item| key_len(1) + delimited_len(str_len(3, item))).sum::<usize>() as u64,
                    buf,
                );
                for item in *items {
                    encode_key(1, WireType::LengthDelimited, buf);
                    encode_varint(str_len(3, item) as u64, buf);
                    write_str(3, item, buf);
                }
            }
            Value::Struct(fields) => {
                encode_key(5, WireType::LengthDelimited, buf);
                encode_varint(struct_len(fields) as u64, buf);
                write_struct(fields, buf);
            }
            Value::Proto(value) => value.encode_raw(buf),
        }
    }
}

/// What a decision record is made of.
pub struct Decided<'a> {
    pub decision_id: &'a str,
    pub request: &'a pb::EvaluateRequest,
    /// The time the rules saw (`context.time`).
    pub time: chrono::DateTime<chrono::Utc>,
    /// When the engine decided: the event's time. When the rules saw
    /// another time (a principal granted `assert_time`), the payload's
    /// `evaluated_at` keeps that one, and the event stays dated by the
    /// engine's clock, which the audit service's bound on future times
    /// accepts.
    pub decided_at: chrono::DateTime<chrono::Utc>,
    pub response: &'a pb::EvaluateResponse,
    pub effect: &'a str,
    /// What the rules alone decided (before kill switches, limits and
    /// approvals): what `wardenctl policy replay` compares with.
    pub rules_effect: &'a str,
    /// Params a policy marks as personal data: they go to the event's
    /// `sensitive` part, kept encrypted under the agent's subject key
    /// (forgettable); the rest stay in the payload.
    pub personal: &'a BTreeSet<String>,
}

/// The encoded `AuditEvent` of one decision: the request as evaluated (so
/// a candidate policy set can re-decide it, `wardenctl policy replay`) and
/// what was decided.
pub fn encode(decided: &Decided<'_>) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_into(decided, &mut buf);
    buf
}

/// [`encode`], appended to `buf` (a journal record's header before it).
pub fn encode_into<'a>(decided: &Decided<'a>, buf: &mut Vec<u8>) {
    let Decided { decision_id, request, time, decided_at, response, effect, rules_effect, personal } = *decided;
    let action = request.action.as_ref().expect("validated");
    let agent = request.agent.as_ref().expect("validated");
    // Map entries in key order, as prost writes a `Struct`: the bytes are
    // the canonical encoding of the event they decode to.
    let mut labels: Vec<_> = agent.labels.iter().map(|(key, value)| (key.as_str(), Value::Str(value))).collect();
    labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let agent_value = Value::Struct(vec![
        ("confidence", Value::Number(agent.confidence)),
        ("id", Value::Str(&agent.id)),
        ("labels", Value::Struct(labels)),
        ("name", Value::Str(&agent.name)),
        ("roles", Value::List(&agent.roles)),
    ]);
    let (mut plain, mut private) = (Vec::new(), prost_types::Struct::default());
    for (key, value) in action.params.iter().flat_map(|p| p.fields.iter()) {
        if personal.contains(key) {
            private.fields.insert(key.clone(), value.clone());
        } else {
            plain.push((key.as_str(), Value::Proto(value)));
        }
    }
    // A decision many rules made records the first of them and counts the
    // rest, so its event stays within what the audit log stores.
    let recorded = |list: &'a [String]| &list[..list.len().min(RECORDED_REASONS)];
    let omitted = [&response.matched_rules, &response.reasons, &response.shadow_rules]
        .iter()
        .map(|list| list.len().saturating_sub(RECORDED_REASONS))
        .max()
        .unwrap_or(0);
    let mut payload = vec![
        ("action", Value::Str(&action.r#type)),
        ("agent", agent_value),
        ("approval_id", Value::Str(&response.approval_id)),
        ("effect", Value::Str(effect)),
        ("estimated_cost", Value::Number(action.estimated_cost)),
    ];
    let evaluated_at = ((time - decided_at).abs() > chrono::TimeDelta::seconds(1))
        .then(|| time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    if let Some(at) = &evaluated_at {
        payload.push(("evaluated_at", Value::Str(at)));
    }
    payload.push(("matched_rules", Value::List(recorded(&response.matched_rules))));
    if omitted > 0 {
        payload.push(("omitted_reasons", Value::Number(omitted as f64)));
    }
    payload.extend([
        ("params", Value::Struct(plain)),
        ("policy_version", Value::Str(&response.policy_version)),
        ("reasons", Value::List(recorded(&response.reasons))),
        ("resource", Value::Str(&action.resource)),
        ("rules_effect", Value::Str(rules_effect)),
        ("shadow_rules", Value::List(recorded(&response.shadow_rules))),
    ]);
    let timestamp =
        prost_types::Timestamp { seconds: decided_at.timestamp(), nanos: decided_at.timestamp_subsec_nanos() as i32 };
    let payload_len = struct_len(&payload);
    buf.reserve(256 + payload_len);
    write_str(1, decision_id, buf);
    write_str(2, "policy_evaluation", buf);
    prost::encoding::message::encode(3, &timestamp, buf);
    if !request.correlation_id.is_empty() {
        write_str(4, &request.correlation_id, buf);
    }
    write_str(5, &agent.id, buf);
    write_str(6, "warden-policy-engine", buf);
    encode_key(7, WireType::LengthDelimited, buf);
    encode_varint(payload_len as u64, buf);
    write_struct(&payload, buf);
    if !private.fields.is_empty() {
        let sensitive = prost_types::Struct {
            fields: [("params".to_string(), prost_types::Value { kind: Some(Kind::StructValue(private)) })].into(),
        };
        prost::encoding::message::encode(8, &sensitive, buf);
    }
}

#[cfg(test)]
mod tests {
    use warden_proto::audit::v1::AuditEvent;

    use super::*;

    fn text(s: &str) -> prost_types::Value {
        prost_types::Value { kind: Some(Kind::StringValue(s.into())) }
    }

    fn number(n: f64) -> prost_types::Value {
        prost_types::Value { kind: Some(Kind::NumberValue(n)) }
    }

    fn list(items: &[&str]) -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::ListValue(prost_types::ListValue { values: items.iter().map(|s| text(s)).collect() })),
        }
    }

    fn object(fields: Vec<(&str, prost_types::Value)>) -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::StructValue(prost_types::Struct {
                fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            })),
        }
    }

    #[test]
    fn the_bytes_decode_to_the_decision_with_personal_params_set_apart() {
        let params = prost_types::Struct {
            fields: [
                ("amount".to_string(), number(150.0)),
                ("email".to_string(), text("ada@example.com")),
                ("items".to_string(), list(&["a", "b"])),
                (
                    "nested".to_string(),
                    object(vec![(
                        "deep",
                        object(vec![("x", prost_types::Value { kind: Some(Kind::BoolValue(true)) })]),
                    )]),
                ),
            ]
            .into(),
        };
        let request = pb::EvaluateRequest {
            agent: Some(pb::Agent {
                id: "support-bot".into(),
                name: "Support".into(),
                roles: vec!["support".into(), "tier-1".into()],
                confidence: 0.93,
                labels: [("team".to_string(), "care".to_string())].into(),
            }),
            action: Some(pb::Action {
                r#type: "issue_refund".into(),
                resource: "order/42".into(),
                estimated_cost: 150.0,
                params: Some(params),
            }),
            time: None,
            correlation_id: "corr-7".into(),
            approval_id: String::new(),
        };
        let response = pb::EvaluateResponse {
            decision_id: "d-1".into(),
            effect: 3,
            reasons: vec!["refunds over 100 need a manager".into()],
            matched_rules: vec!["refund-approval".into()],
            shadow_rules: vec![],
            policy_version: "v9".into(),
            approval_id: "ap-1".into(),
        };
        let time = chrono::DateTime::from_timestamp(1_800_000_000, 5_000).unwrap();
        let personal = BTreeSet::from(["email".to_string()]);
        let bytes = encode(&Decided {
            decision_id: "d-1",
            request: &request,
            time,
            decided_at: time,
            response: &response,
            effect: "require_approval",
            // An approval limit exceeded: the rules alone allowed.
            rules_effect: "allow",
            personal: &personal,
        });
        let event = AuditEvent::decode(bytes.as_slice()).unwrap();
        let expected_payload = prost_types::Struct {
            fields: [
                (
                    "agent",
                    object(vec![
                        ("id", text("support-bot")),
                        ("name", text("Support")),
                        ("roles", list(&["support", "tier-1"])),
                        ("confidence", number(0.93)),
                        ("labels", object(vec![("team", text("care"))])),
                    ]),
                ),
                (
                    "params",
                    object(vec![
                        ("amount", number(150.0)),
                        ("items", list(&["a", "b"])),
                        (
                            "nested",
                            object(vec![(
                                "deep",
                                object(vec![("x", prost_types::Value { kind: Some(Kind::BoolValue(true)) })]),
                            )]),
                        ),
                    ]),
                ),
                ("action", text("issue_refund")),
                ("resource", text("order/42")),
                ("estimated_cost", number(150.0)),
                ("effect", text("require_approval")),
                ("rules_effect", text("allow")),
                ("reasons", list(&["refunds over 100 need a manager"])),
                ("matched_rules", list(&["refund-approval"])),
                ("shadow_rules", list(&[])),
                ("policy_version", text("v9")),
                ("approval_id", text("ap-1")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        };
        let expected = AuditEvent {
            event_id: "d-1".into(),
            event_type: "policy_evaluation".into(),
            time: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 5_000 }),
            correlation_id: "corr-7".into(),
            agent_id: "support-bot".into(),
            actor: "warden-policy-engine".into(),
            payload: Some(expected_payload),
            sensitive: Some(prost_types::Struct {
                fields: [("params".to_string(), object(vec![("email", text("ada@example.com"))]))].into(),
            }),
            subject: String::new(),
        };
        assert_eq!(event, expected);
        // Canonical: prost writes the same bytes for the decoded event.
        assert_eq!(event.encode_to_vec(), bytes);

        // Evaluated at another time, by a decision of 70 rules: the event
        // is dated when it was decided, keeps the time the rules saw, and
        // records the first 64 reasons and counts the rest; still canonical.
        let many = pb::EvaluateResponse {
            reasons: (0..70).map(|i| format!("reason {i}")).collect(),
            matched_rules: (0..70).map(|i| format!("rule-{i}")).collect(),
            ..response.clone()
        };
        let decided_at = chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let bytes = encode(&Decided {
            decision_id: "d-2",
            request: &request,
            time,
            decided_at,
            response: &many,
            effect: "allow",
            rules_effect: "allow",
            personal: &personal,
        });
        let event = AuditEvent::decode(bytes.as_slice()).unwrap();
        assert_eq!(event.encode_to_vec(), bytes);
        assert_eq!(event.time.unwrap().seconds, 1_900_000_000);
        let fields = &event.payload.as_ref().unwrap().fields;
        assert_eq!(fields["evaluated_at"], text("2027-01-15T08:00:00.000005Z"));
        assert_eq!(fields["omitted_reasons"], number(6.0));
        let Some(Kind::ListValue(reasons)) = &fields["reasons"].kind else { panic!("reasons") };
        assert_eq!(reasons.values.len(), 64);
    }
}
