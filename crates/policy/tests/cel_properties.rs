//! Property tests of CEL conditions: arbitrary text through the parser and
//! checker never panics, and generated conditions over arbitrary requests
//! never panic, never spend more than their load-time estimate (for
//! requests within the bounds the estimate assumes) and never run past
//! their budget.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use prost_types::{ListValue, Struct, Value as ProtoValue, value::Kind};
use warden_policy::cel::cost::{Budget, MAX_COST};
use warden_policy::cel::{Input, Program};
use warden_proto::policy::v1::{Action, Agent};

const TOKENS: &[&str] = &[
    "agent",
    "action",
    "context",
    ".",
    "roles",
    "params",
    "items",
    "name",
    "time",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "?",
    ".?",
    "+",
    "-",
    "*",
    "/",
    "%",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&&",
    "||",
    "!",
    "in",
    "1",
    "2.5",
    "-3",
    "7u",
    "'a'",
    "\"b\"",
    "b'c'",
    "true",
    "false",
    "null",
    "x",
    "y",
    "all",
    "exists",
    "map",
    "filter",
    "size",
    "has",
    "cel",
    "bind",
    "lists",
    "range",
    "sets",
    "contains",
    "optional",
    "of",
    "none",
    "orValue",
    "format",
    "join",
    "split",
    "ip",
    "cidr",
    "timestamp",
    "duration",
    "'1h'",
    "int",
    "string",
    "matches",
    "'[a-z]+'",
    "transformList",
    "existsOne",
    "sort",
    "distinct",
    "flatten",
    "`k-1`",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..40).prop_map(|tokens| tokens.join(" "))
}

/// A list-valued expression, possibly over the comprehension variable `v`.
fn list_expr() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "agent.roles".to_string(),
        "action.params.items".into(),
        "[1, 2, 3]".into(),
        "['a', 'b', 'a']".into(),
        "lists.range(20)".into(),
        "action.params.items.map(v, string(v))".into(),
        "agent.roles.filter(v, v.size() > 2)".into(),
        "action.params.items.sortBy(v, string(v))".into(),
        "action.params.name.split('a')".into(),
        "agent.roles + action.params.items".into(),
        "[action.params.items, agent.roles].flatten()".into(),
    ])
}

fn bool_expr() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "true".to_string(),
        "string(x) != ''".into(),
        "size(string(x) + 'z') > 1".into(),
        "action.params.name.upperAscii().contains('A')".into(),
        "'%s'.format([x]).size() < 100".into(),
        "action.params.?missing.orValue(1) == 1".into(),
        "agent.roles.join('-').size() >= 0".into(),
        "agent.roles.first().orValue('') <= 'zzz'".into(),
    ]);
    leaf.prop_recursive(3, 24, 3, |inner| {
        prop_oneof![
            (list_expr(), inner.clone()).prop_map(|(l, b)| format!("{l}.all(x, {b})")),
            (list_expr(), inner.clone()).prop_map(|(l, b)| format!("{l}.exists(x, {b})")),
            (list_expr(), inner.clone()).prop_map(|(l, b)| format!("{l}.filter(x, {b}).size() >= 0")),
            (list_expr(), inner.clone()).prop_map(|(l, b)| format!("{l}.transformList(i, x, {b}).size() >= 0")),
            (list_expr(), list_expr()).prop_map(|(a, b)| format!("sets.intersects({a}, {b})")),
            list_expr().prop_map(|l| format!("{l}.sort().size() >= 0 && {l}.distinct().size() >= 0")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) || !({b})")),
            inner.prop_map(|b| format!("cel.bind(x, action.params.name, {b})")),
        ]
    })
}

fn proto_value() -> impl Strategy<Value = ProtoValue> {
    prop_oneof![
        "[a-zA-Z ]{0,20}".prop_map(|s| ProtoValue { kind: Some(Kind::StringValue(s)) }),
        (-1000.0f64..1000.0).prop_map(|n| ProtoValue { kind: Some(Kind::NumberValue(n)) }),
        any::<bool>().prop_map(|b| ProtoValue { kind: Some(Kind::BoolValue(b)) }),
    ]
}

/// A request within the bounds the cost estimate assumes.
fn request() -> impl Strategy<Value = (Agent, Action)> {
    (prop::collection::vec("[a-z]{0,12}", 0..8), prop::collection::vec(proto_value(), 0..60), "[a-zA-Z]{0,30}")
        .prop_map(|(roles, items, name)| {
            let params = Struct {
                fields: BTreeMap::from([
                    ("items".to_string(), ProtoValue { kind: Some(Kind::ListValue(ListValue { values: items })) }),
                    ("name".to_string(), ProtoValue { kind: Some(Kind::StringValue(name)) }),
                ]),
            };
            let agent = Agent {
                id: "agent-1".into(),
                name: "agent".into(),
                roles,
                confidence: 0.5,
                labels: HashMap::from([("team".to_string(), "a".to_string())]),
            };
            let action = Action { r#type: "t".into(), resource: "r".into(), estimated_cost: 1.0, params: Some(params) };
            (agent, action)
        })
}

fn noon() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-15T12:00:00Z").expect("a timestamp").with_timezone(&Utc)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_is_a_value_or_a_load_error(text in "\\PC{0,80}") {
        let _ = Program::compile(&text);
    }

    #[test]
    fn token_soup_is_a_value_or_a_load_error(text in token_soup()) {
        let _ = Program::compile(&text);
    }

    #[test]
    fn evaluation_spends_no_more_than_the_estimate(condition in bool_expr(), (agent, action) in request()) {
        let Ok(program) = Program::compile(&condition) else {
            // Refused at load (over the cost bound, or a type error): fine.
            return Ok(());
        };
        let input = Input { agent: &agent, action: &action, time: noon(), correlation_id: "c" };
        let budget = Budget::new(MAX_COST);
        let _ = program.evaluate_with(&input, &budget);
        prop_assert!(
            budget.spent() <= program.estimated_cost(),
            "{condition}: spent {} but estimated {}",
            budget.spent(),
            program.estimated_cost()
        );
    }

    #[test]
    fn evaluation_stops_at_its_budget(condition in bool_expr(), (agent, action) in request(), limit in 0u64..200) {
        let Ok(program) = Program::compile(&condition) else {
            return Ok(());
        };
        let input = Input { agent: &agent, action: &action, time: noon(), correlation_id: "c" };
        let budget = Budget::new(limit);
        match program.evaluate_with(&input, &budget) {
            Ok(_) => prop_assert!(budget.spent() <= limit),
            Err(e) if budget.spent() > limit => prop_assert!(e.0.contains("cost budget"), "{e}"),
            Err(_) => {}
        }
    }
}
