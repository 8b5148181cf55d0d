//! A decision's `policy_evaluation` audit event, encoded straight to
//! protobuf bytes from the request and response it describes.
//!
//! Building the event as a `prost_types::Struct` (a `BTreeMap` per level,
//! every string cloned) and then encoding it cost about a quarter of the
//! engine's CPU with the decision log on; this writes the same bytes from
//! borrowed values. The audit service decodes them as any `AuditEvent`.

use std::collections::BTreeSet;

use prost::Message;
use prost::encoding::{WireType, encoded_len_varint};
use prost_types::value::Kind;
use warden_contract::bounds::RECORDED_REASONS;
use warden_proto::policy::v1 as pb;

/// A `google.protobuf.Value`, borrowed, with its encoded length worked out
/// once, when it is made: a length written before each nested message,
/// recomputed at each level, cost more than the writing (a third of an
/// event's encoding was lengths of lengths, `bench h2load --callgrind`).
struct Value<'a> {
    kind: ValueKind<'a>,
    /// The length of this `Value` message's body.
    len: usize,
}

enum ValueKind<'a> {
    Str(&'a str),
    Number(f64),
    /// The strings, and the length of the `ListValue` body they make.
    List(&'a [String], usize),
    /// The fields, and the length of the `Struct` body they make.
    Struct(Vec<(&'a str, Value<'a>)>, usize),
    /// A value from the request, as the agent sent it.
    Proto(&'a prost_types::Value),
}

/// The field numbers here are all below 16: a key is one byte.
fn key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    debug_assert!((1..16).contains(&tag));
    buf.push(((tag << 3) | wire_type as u32) as u8);
}

const KEY_LEN: usize = 1;

fn varint(value: usize, buf: &mut Vec<u8>) {
    if value < 0x80 {
        buf.push(value as u8);
    } else {
        prost::encoding::encode_varint(value as u64, buf);
    }
}

fn delimited_len(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

fn write_str(tag: u32, value: &str, buf: &mut Vec<u8>) {
    key(tag, WireType::LengthDelimited, buf);
    varint(value.len(), buf);
    buf.extend_from_slice(value.as_bytes());
}

fn str_len(value: &str) -> usize {
    KEY_LEN + delimited_len(value.len())
}

/// The length of a `Struct` entry's body (key, value). As prost writes a
/// map entry, an empty key and an unset value are left out.
fn entry_len(name: &str, value: &Value<'_>) -> usize {
    let key_len = if name.is_empty() { 0 } else { str_len(name) };
    let value_len = if value.is_unset() { 0 } else { KEY_LEN + delimited_len(value.len) };
    key_len + value_len
}

/// The length of a `Struct`'s body.
fn struct_len(fields: &[(&str, Value<'_>)]) -> usize {
    fields.iter().map(|(name, value)| KEY_LEN + delimited_len(entry_len(name, value))).sum()
}

fn write_struct(fields: &[(&str, Value<'_>)], buf: &mut Vec<u8>) {
    for (name, value) in fields {
        key(1, WireType::LengthDelimited, buf);
        varint(entry_len(name, value), buf);
        if !name.is_empty() {
            write_str(1, name, buf);
        }
        if !value.is_unset() {
            key(2, WireType::LengthDelimited, buf);
            varint(value.len, buf);
            value.write(buf);
        }
    }
}

impl<'a> Value<'a> {
    fn str(text: &'a str) -> Value<'a> {
        Value { kind: ValueKind::Str(text), len: str_len(text) }
    }

    fn number(number: f64) -> Value<'a> {
        Value { kind: ValueKind::Number(number), len: KEY_LEN + 8 }
    }

    fn list(items: &'a [String]) -> Value<'a> {
        let body = items.iter().map(|item| KEY_LEN + delimited_len(str_len(item))).sum();
        Value { kind: ValueKind::List(items, body), len: KEY_LEN + delimited_len(body) }
    }

    fn object(fields: Vec<(&'a str, Value<'a>)>) -> Value<'a> {
        let body = struct_len(&fields);
        Value { kind: ValueKind::Struct(fields, body), len: KEY_LEN + delimited_len(body) }
    }

    fn proto(value: &'a prost_types::Value) -> Value<'a> {
        Value { kind: ValueKind::Proto(value), len: value.encoded_len() }
    }

    /// A `Value` of no kind (the default message).
    fn is_unset(&self) -> bool {
        matches!(self.kind, ValueKind::Proto(value) if value.kind.is_none())
    }

    fn write(&self, buf: &mut Vec<u8>) {
        match &self.kind {
            ValueKind::Str(text) => write_str(3, text, buf),
            ValueKind::Number(number) => {
                key(2, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&number.to_le_bytes());
            }
            ValueKind::List(items, body) => {
                key(6, WireType::LengthDelimited, buf);
                varint(*body, buf);
                for item in *items {
                    key(1, WireType::LengthDelimited, buf);
                    varint(str_len(item), buf);
                    write_str(3, item, buf);
                }
            }
            ValueKind::Struct(fields, body) => {
                key(5, WireType::LengthDelimited, buf);
                varint(*body, buf);
                write_struct(fields, buf);
            }
            ValueKind::Proto(value) => value.encode_raw(buf),
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
    let mut labels: Vec<_> = agent.labels.iter().map(|(key, value)| (key.as_str(), Value::str(value))).collect();
    labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let agent_value = Value::object(vec![
        ("confidence", Value::number(agent.confidence)),
        ("id", Value::str(&agent.id)),
        ("labels", Value::object(labels)),
        ("name", Value::str(&agent.name)),
        ("roles", Value::list(&agent.roles)),
    ]);
    let (mut plain, mut private) = (Vec::new(), prost_types::Struct::default());
    for (key, value) in action.params.iter().flat_map(|p| p.fields.iter()) {
        if personal.contains(key) {
            private.fields.insert(key.clone(), value.clone());
        } else {
            plain.push((key.as_str(), Value::proto(value)));
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
        ("action", Value::str(&action.r#type)),
        ("agent", agent_value),
        ("approval_id", Value::str(&response.approval_id)),
        ("effect", Value::str(effect)),
        ("estimated_cost", Value::number(action.estimated_cost)),
    ];
    let evaluated_at = ((time - decided_at).abs() > chrono::TimeDelta::seconds(1))
        .then(|| time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    if let Some(at) = &evaluated_at {
        payload.push(("evaluated_at", Value::str(at)));
    }
    payload.push(("matched_rules", Value::list(recorded(&response.matched_rules))));
    if omitted > 0 {
        payload.push(("omitted_reasons", Value::number(omitted as f64)));
    }
    payload.extend([
        ("params", Value::object(plain)),
        ("policy_version", Value::str(&response.policy_version)),
        ("reasons", Value::list(recorded(&response.reasons))),
        ("resource", Value::str(&action.resource)),
        ("rules_effect", Value::str(rules_effect)),
        ("shadow_rules", Value::list(recorded(&response.shadow_rules))),
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
    if !agent.id.is_empty() {
        write_str(5, &agent.id, buf);
    }
    write_str(6, "warden-policy-engine", buf);
    key(7, WireType::LengthDelimited, buf);
    varint(payload_len, buf);
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

    /// The event built as prost messages and encoded by prost: what the
    /// bytes must equal, whatever the agent sent.
    fn reference(decided: &Decided<'_>) -> Vec<u8> {
        let (request, response) = (decided.request, decided.response);
        let (agent, action) = (request.agent.as_ref().unwrap(), request.action.as_ref().unwrap());
        let strings = |items: &[String]| prost_types::Value {
            kind: Some(Kind::ListValue(prost_types::ListValue { values: items.iter().map(|s| text(s)).collect() })),
        };
        let map = |fields: Vec<(String, prost_types::Value)>| prost_types::Value {
            kind: Some(Kind::StructValue(prost_types::Struct { fields: fields.into_iter().collect() })),
        };
        let labels = agent.labels.iter().map(|(k, v)| (k.clone(), text(v))).collect();
        let (mut plain, mut private) = (Vec::new(), Vec::new());
        for (k, v) in action.params.iter().flat_map(|p| p.fields.iter()) {
            if decided.personal.contains(k) {
                private.push((k.clone(), v.clone()))
            } else {
                plain.push((k.clone(), v.clone()))
            }
        }
        let first = |list: &[String]| list[..list.len().min(RECORDED_REASONS)].to_vec();
        let mut payload = vec![
            ("action", text(&action.r#type)),
            (
                "agent",
                map(vec![
                    ("confidence".into(), number(agent.confidence)),
                    ("id".into(), text(&agent.id)),
                    ("labels".into(), map(labels)),
                    ("name".into(), text(&agent.name)),
                    ("roles".into(), strings(&agent.roles)),
                ]),
            ),
            ("approval_id", text(&response.approval_id)),
            ("effect", text(decided.effect)),
            ("estimated_cost", number(action.estimated_cost)),
            ("matched_rules", strings(&first(&response.matched_rules))),
            ("params", map(plain)),
            ("policy_version", text(&response.policy_version)),
            ("reasons", strings(&first(&response.reasons))),
            ("resource", text(&action.resource)),
            ("rules_effect", text(decided.rules_effect)),
            ("shadow_rules", strings(&first(&response.shadow_rules))),
        ];
        if (decided.time - decided.decided_at).abs() > chrono::TimeDelta::seconds(1) {
            payload.push(("evaluated_at", text(&decided.time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))));
        }
        let omitted = [&response.matched_rules, &response.reasons, &response.shadow_rules]
            .iter()
            .map(|list| list.len().saturating_sub(RECORDED_REASONS))
            .max()
            .unwrap();
        if omitted > 0 {
            payload.push(("omitted_reasons", number(omitted as f64)));
        }
        AuditEvent {
            event_id: decided.decision_id.into(),
            event_type: "policy_evaluation".into(),
            time: Some(prost_types::Timestamp {
                seconds: decided.decided_at.timestamp(),
                nanos: decided.decided_at.timestamp_subsec_nanos() as i32,
            }),
            correlation_id: request.correlation_id.clone(),
            agent_id: agent.id.clone(),
            actor: "warden-policy-engine".into(),
            payload: Some(prost_types::Struct {
                fields: payload.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            }),
            sensitive: (!private.is_empty())
                .then(|| prost_types::Struct { fields: [("params".to_string(), map(private))].into() }),
            subject: String::new(),
        }
        .encode_to_vec()
    }

    #[test]
    fn hostile_values_encode_as_prost_would() {
        // Lengths that take one, two and three bytes to write; text that is
        // not ASCII, empty, or holds NULs and quotes; labels in no order;
        // params nested 40 deep and a list of 300; more reasons than are
        // recorded; a personal param among them.
        let long = |n: usize| "é\"\0x".repeat(n);
        let mut nested = text("bottom");
        for i in 0..40 {
            nested = object(vec![(if i % 2 == 0 { "a" } else { "" }, nested), ("n", number(f64::from(i)))]);
        }
        let many: Vec<prost_types::Value> = (0..300).map(|i| number(f64::from(i) * -1.5)).collect();
        let params = prost_types::Struct {
            fields: [
                ("nested".to_string(), nested),
                (
                    "many".to_string(),
                    prost_types::Value { kind: Some(Kind::ListValue(prost_types::ListValue { values: many })) },
                ),
                ("null".to_string(), prost_types::Value { kind: Some(Kind::NullValue(0)) }),
                ("empty".to_string(), prost_types::Value { kind: None }),
                (long(40), text(&long(5000))),
                ("ssn".to_string(), text("078-05-1120")),
                (String::new(), text("a param with no name")),
            ]
            .into(),
        };
        for (size, reasons) in [(0, 0), (1, 1), (30, 64), (4000, 65), (20, 500)] {
            let request = pb::EvaluateRequest {
                agent: Some(pb::Agent {
                    id: long(size.min(60)),
                    name: long(size),
                    roles: (0..reasons.min(20)).map(|i| format!("role-{i}")).collect(),
                    confidence: 0.5,
                    labels: (0..reasons.min(30)).map(|i| (format!("k{}", 29 - i), long(size.min(100)))).collect(),
                }),
                action: Some(pb::Action {
                    r#type: long(size),
                    resource: long(size),
                    estimated_cost: f64::MAX,
                    params: (reasons > 0).then(|| params.clone()),
                }),
                time: None,
                correlation_id: long(size),
                approval_id: String::new(),
            };
            let response = pb::EvaluateResponse {
                decision_id: "d".into(),
                effect: 1,
                reasons: (0..reasons).map(|i| format!("{} {i}", long(size.min(50)))).collect(),
                matched_rules: (0..reasons / 2).map(|i| format!("rule-{i}")).collect(),
                shadow_rules: (0..reasons / 3).map(|i| format!("shadow-{i}")).collect(),
                policy_version: long(size.min(64)),
                approval_id: long(size.min(20)),
            };
            let time = chrono::DateTime::from_timestamp(1_800_000_000, 999_999_999).unwrap();
            let personal = BTreeSet::from(["ssn".to_string()]);
            for decided_at in [time, time + chrono::TimeDelta::seconds(90)] {
                let decided = Decided {
                    decision_id: "d",
                    request: &request,
                    time,
                    decided_at,
                    response: &response,
                    effect: "deny",
                    rules_effect: "allow",
                    personal: &personal,
                };
                assert_eq!(encode(&decided), reference(&decided), "size {size}, reasons {reasons}");
            }
        }
    }
}
