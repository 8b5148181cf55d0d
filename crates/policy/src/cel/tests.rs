//! Data-driven tests of conditions: one `check` helper per outcome.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use prost_types::{Struct, Value as ProtoValue, value::Kind};
use warden_proto::policy::v1::{Action, Agent};

use super::{Input, Program};

fn agent() -> Agent {
    Agent {
        id: "agent-7".into(),
        name: "Support bot".into(),
        roles: vec!["support".into(), "refunds".into()],
        confidence: 0.65,
        labels: HashMap::from([("team".into(), "billing".into())]),
    }
}

fn number(n: f64) -> ProtoValue {
    ProtoValue { kind: Some(Kind::NumberValue(n)) }
}

fn text(s: &str) -> ProtoValue {
    ProtoValue { kind: Some(Kind::StringValue(s.into())) }
}

fn action() -> Action {
    let nested = Struct { fields: [("country".to_string(), text("NL"))].into() };
    let params = Struct {
        fields: [
            ("amount".to_string(), number(150.0)),
            ("currency".to_string(), text("EUR")),
            ("customer".to_string(), ProtoValue { kind: Some(Kind::StructValue(nested)) }),
            (
                "tags".to_string(),
                ProtoValue {
                    kind: Some(Kind::ListValue(prost_types::ListValue { values: vec![text("vip"), text("eu")] })),
                },
            ),
        ]
        .into(),
    };
    Action { r#type: "issue_refund".into(), resource: "order/42".into(), estimated_cost: 150.0, params: Some(params) }
}

fn at(time: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(time).unwrap().with_timezone(&Utc)
}

fn run(source: &str, time: &str) -> Result<bool, String> {
    let program = Program::compile(source).map_err(|e| format!("compile: {e}"))?;
    let (agent, action) = (agent(), action());
    let input = Input { agent: &agent, action: &action, time: at(time), correlation_id: "corr-1" };
    program.evaluate(&input).map_err(|e| format!("eval: {e}"))
}

const NOON: &str = "2026-06-15T12:00:00Z";

fn check(source: &str, expected: bool) {
    assert_eq!(run(source, NOON), Ok(expected), "{source}");
}

fn check_at(source: &str, time: &str, expected: bool) {
    assert_eq!(run(source, time), Ok(expected), "{source} at {time}");
}

fn check_compile_error(source: &str, expected: &str) {
    let error = Program::compile(source).unwrap_err().to_string();
    assert!(error.contains(expected), "{source}: got {error:?}, expected it to contain {expected:?}");
}

fn check_eval_error(source: &str, expected: &str) {
    let error = run(source, NOON).unwrap_err();
    assert!(error.starts_with("eval: ") && error.contains(expected), "{source}: got {error:?}");
}

#[test]
fn fields_of_agent_action_and_context() {
    check("agent.id == 'agent-7'", true);
    check("agent.confidence < 0.7", true);
    check("'refunds' in agent.roles", true);
    check("'admin' in agent.roles", false);
    check("agent.labels.team == 'billing'", true);
    check("agent.labels['team'].startsWith('bill')", true);
    check("action.type == 'issue_refund' && action.resource.startsWith('order/')", true);
    check("action.estimated_cost > 100.0", true);
    check("action.estimated_cost > 500", false);
    check("action.params.amount > 100.0", true);
    check("action.params.customer.country in ['NL', 'BE']", true);
    check("action.params.tags.exists(t, t == 'vip')", true);
    check("action.params.tags.all(t, size(t) == 2)", false);
    check("size(action.params.tags) == 2 && action.params.tags[1] == 'eu'", true);
    check("context.correlation_id == 'corr-1'", true);
}

#[test]
fn presence_and_macros() {
    check("has(action.params.amount)", true);
    check("has(action.params.refund_reason)", false);
    check("has(agent.labels.team) && !has(agent.labels.region)", true);
    check("has(agent.name)", true);
    check("[1, 2, 3].exists_one(x, x > 2)", true);
    check("[1, 2, 3].map(x, x * 2) == [2, 4, 6]", true);
    check("[1, 2, 3].filter(x, x % 2 == 1).size() == 2", true);
    check("{'a': 1, 'b': 2}.all(k, k in ['a', 'b'])", true);
    check("agent.roles.map(r, r.upperAscii()).exists(r, r == 'SUPPORT')", true);
}

#[test]
fn operators_and_conversions() {
    check("1 + 2 * 3 == 7 && 7 / 2 == 3 && 7 % 2 == 1", true);
    check("2u + 3u == 5u && 1 == 1.0 && 1u == 1", true);
    check("-1 < 0u && 1.5 > 1", true);
    check("'ab' + 'c' == 'abc' && 'abc'.contains('b') && 'abc'.matches('^a.c$')", true);
    check("int(action.params.amount) == 150 && double(3) == 3.0 && string(42) == '42'", true);
    check("true ? false : true", false);
    check("duration('1h30m') == duration('90m') && duration('1h').getMinutes() == 60", true);
    check("timestamp('2026-06-15T12:00:00Z') == context.time", true);
    check("context.time - duration('1h') < context.time", true);
    check("context.time + duration('36h') > timestamp('2026-06-16T23:00:00Z')", true);
}

#[test]
fn errors_are_absorbed_where_cel_says_so() {
    // The right-hand side decides: the missing key on the left does not matter.
    check("action.params.missing > 1.0 || true", true);
    check("action.params.missing > 1.0 && false", false);
    check("false && action.params.missing > 1.0", false);
}

#[test]
fn timestamps_in_time_zones() {
    check("context.time.getHours() == 12", true);
    check("context.time.getHours('America/New_York') == 8", true);
    check("context.time.getHours('Asia/Kolkata') == 17 && context.time.getMinutes('Asia/Kolkata') == 30", true);
    check("context.time.getHours('+05:30') == 17", true);
    check("context.time.getDayOfWeek() == 1", true); // 2026-06-15 is a Monday
    check("context.time.getMonth() == 5 && context.time.getDate() == 15 && context.time.getDayOfMonth() == 14", true);
    check("context.time.getFullYear() == 2026 && context.time.getDayOfYear() == 165", true);
    check("context.time.getHours('America/New_York') >= 17", false);
}

#[test]
fn time_zones_across_daylight_saving_changes() {
    let after_hours = "context.time.getHours('America/New_York') >= 17";
    // Spring forward on 2026-03-08: 21:30 UTC is 16:30 EST the day before,
    // and 16:30 EDT... is 20:30 UTC after the change.
    check_at(after_hours, "2026-03-07T21:30:00Z", false); // 16:30 EST
    check_at(after_hours, "2026-03-07T22:00:00Z", true); // 17:00 EST
    check_at(after_hours, "2026-03-09T21:00:00Z", true); // 17:00 EDT
    check_at(after_hours, "2026-03-09T20:30:00Z", false); // 16:30 EDT
    let hour = "context.time.getHours('America/New_York')";
    check_at(&format!("{hour} == 1"), "2026-03-08T06:30:00Z", true); // 01:30 EST
    check_at(&format!("{hour} == 3"), "2026-03-08T07:30:00Z", true); // 03:30 EDT: 02:xx never happens
    // Fall back on 2026-11-01: 01:30 happens twice.
    check_at(&format!("{hour} == 1"), "2026-11-01T05:30:00Z", true); // 01:30 EDT
    check_at(&format!("{hour} == 1"), "2026-11-01T06:30:00Z", true); // 01:30 EST
    check_at(&format!("{hour} == 2"), "2026-11-01T07:30:00Z", true); // 02:30 EST
    // Europe changes on a different day.
    check_at("context.time.getHours('Europe/Amsterdam') == 3", "2026-03-29T01:00:00Z", true);
}

#[test]
fn load_errors_name_the_problem() {
    check_compile_error("agent.confidance < 0.7", "agent has no field 'confidance'");
    check_compile_error("user.id == 'x'", "undeclared reference to 'user'");
    check_compile_error("action.estimated_cost * 2 > 10.0", "no matching overload for '*' with double and int");
    check_compile_error("agent.id > 3", "no matching overload for '>' with string and int");
    check_compile_error("agent.id", "condition must be a bool");
    check_compile_error("agent == agent", "'agent' is not a value");
    check_compile_error("context.time.getHours('Mars/Olympus') > 1", "unknown time zone");
    check_compile_error("agent.id.matches('[')", "invalid regular expression");
    check_compile_error("frobnicate(agent.id)", "undeclared function 'frobnicate'");
    check_compile_error("agent.id.startsWith()", "no matching overload for 'startsWith' with 0 argument(s)");
    check_compile_error("agent.confidence <", "expected an expression");
    check_compile_error(&vec!["true"; 100].join(" && "), "levels deep");
}

#[test]
fn run_time_errors_are_reported() {
    check_eval_error("action.params.refund_reason == 'x'", "no such key: 'refund_reason'");
    check_eval_error("action.params.currency > 1.0", "no such overload: string > double");
    check_eval_error("action.params.amount * 2 > 1.0", "no such overload: double * int");
    check_eval_error("action.params.tags[5] == 'x'", "index out of range");
    check_eval_error("1 / (action.params.tags.size() - 2) == 1", "division by zero");
    check_eval_error("action.params.amount", "not bool");
}

#[test]
fn times_and_durations_out_of_range_are_errors_not_wrapped_values() {
    // Each was a value before: a policy comparing ages or durations could
    // decide on a wrapped number without any error.
    check_eval_error("duration('200000000000s') + duration('200000000000s') > duration('0s')", "out of range");
    check_eval_error("duration('-200000000000s') - duration('200000000000s') < duration('0s')", "out of range");
    check_eval_error(
        "timestamp('9999-12-31T23:59:59Z') - timestamp('0001-01-01T00:00:00Z') > duration('0s')",
        "out of range",
    );
    check_eval_error("timestamp(253402300800) > context.time", "out of range");
    check_eval_error("timestamp(-62135596801) < context.time", "out of range");
    check_eval_error("timestamp('0000-01-01T00:00:00Z') < context.time", "out of range");
    check_eval_error("timestamp('9999-12-31T23:59:59Z') + duration('1s') > context.time", "out of range");
    check_eval_error("timestamp('0001-01-01T00:00:00Z') - duration('1ns') < context.time", "out of range");
    check_eval_error("int(-9223372036854775808.0) < 0", "out of range");
    check_eval_error("int(9223372036854775807.0) > 0", "out of range");
    // The edges themselves are values.
    check("timestamp('9999-12-31T23:59:59Z') > context.time", true);
    check("timestamp('0001-01-01T00:00:00Z') < context.time", true);
    check("timestamp(-62135596800) < context.time", true);
    check("duration('2562047h') > duration('0s')", true);
    check("int(-9223372036854774784.0) < 0", true);
}

#[test]
fn conditions_pasted_from_other_cel_deployments_load() {
    check("dyn(action.params.amount) > 100.0", true);
    check("dyn(1) == 1", true);
    check("bytes('abc') == b'abc'", true);
    check("size(bytes('ÿ')) == 2", true);
    check("context.time.getHours('02:00') == 14", true);
    check("context.time.getHours('+02:00') == 14", true);
    check("-9223372036854775808 < 0", true);
    check("'\\377' == 'ÿ'", true);
    check("action.params.`currency` == 'EUR'", true);
    check("has(action.params.`content-type`)", false);
    check("action.params.customer.`country` == 'NL'", true);
    check("type(1) == int && type(1u) == uint && type(1.5) == double", true);
    check("type(action.params.amount) == double && type(action.params.currency) == string", true);
    check("type(action.params.tags) == list && type(action.params.customer) == map", true);
    check("type(b'x') == bytes && type(true) == bool && type(null) == null_type", true);
    check("type(context.time) == google.protobuf.Timestamp", true);
    check("type(duration('1s')) == google.protobuf.Duration", true);
    check("type(int) == type && type(1) != string", true);
    check("type(dyn(agent.confidence)) == double", true);
}

#[test]
fn the_strings_extension() {
    check("'héllo'.charAt(1) == 'é' && 'abc'.charAt(3) == ''", true);
    check("'hello mellow'.indexOf('ello') == 1 && 'hello mellow'.indexOf('ello', 2) == 7", true);
    check("'hello mellow'.lastIndexOf('ello') == 7 && 'hello mellow'.lastIndexOf('ello', 6) == 1", true);
    check("'héllo'.indexOf('l') == 2 && 'abc'.indexOf('z') == -1", true);
    check("'a-b-c'.replace('-', '+') == 'a+b+c' && 'a-b-c'.replace('-', '+', 1) == 'a+b-c'", true);
    check("'a,b,c'.split(',') == ['a', 'b', 'c'] && 'a,b,c'.split(',', 2) == ['a', 'b,c']", true);
    check("'héllo'.substring(1) == 'éllo' && 'héllo'.substring(1, 3) == 'él'", true);
    check("'  x  '.trim() == 'x' && 'abc'.reverse() == 'cba'", true);
    check("agent.roles.join(', ') == 'support, refunds' && ['a', 'b'].join() == 'ab'", true);
    check("action.params.currency.charAt(0) == 'E'", true);
    check_eval_error("'abc'.charAt(4) == ''", "out of range");
    check_eval_error("'abc'.substring(2, 1) == ''", "out of range");
    check_compile_error("'abc'.charAt('x') == ''", "no matching overload for 'charAt'");
    check_compile_error("[1, 2].join() == ''", "no matching overload for 'join'");
    // Bounded: no condition builds an unbounded string.
    let long = "x".repeat(2000);
    check_eval_error(&format!("'{}'.replace('', '{long}') == ''", "y".repeat(1000)), "more than the 1048576 allowed");
    check_eval_error(
        &format!("[{}].join('{long}') == ''", vec!["''"; 1000].join(", ")),
        "more than the 1048576 allowed",
    );
}

#[test]
fn the_math_and_encoders_extensions() {
    check("math.greatest(1, 5, 3) == 5 && math.least(1, 5, 3) == 1", true);
    check("math.greatest([1.5, -2.0]) == 1.5 && math.greatest(1, 2.5) == 2.5", true);
    check("math.greatest(action.params.amount, 100.0) == 150.0", true);
    check(
        "math.ceil(1.2) == 2.0 && math.floor(-1.2) == -2.0 && math.round(2.5) == 3.0 && math.trunc(-1.7) == -1.0",
        true,
    );
    check("math.abs(-3) == 3 && math.abs(-1.5) == 1.5 && math.sign(-7) == -1 && math.sign(0.0) == 0.0", true);
    check("math.isNaN(0.0 / 0.0) && math.isInf(1.0 / 0.0) && math.isFinite(1.0)", true);
    check("math.sqrt(16) == 4.0 && math.sqrt(2.25) == 1.5", true);
    check("math.bitAnd(6, 3) == 2 && math.bitOr(6, 3) == 7 && math.bitXor(6, 3) == 5 && math.bitNot(0) == -1", true);
    check("math.bitShiftLeft(1, 4) == 16 && math.bitShiftRight(16u, 2) == 4u && math.bitShiftLeft(1, 64) == 0", true);
    check("base64.encode(b'hello') == 'aGVsbG8=' && base64.decode('aGVsbG8=') == b'hello'", true);
    check("base64.decode('aGVsbG8') == b'hello'", true);
    check_eval_error("math.abs(-9223372036854775808) == 0", "overflow");
    check_eval_error("base64.decode('!!') == b''", "base64.decode");
    check_compile_error("math.ceil(1) == 1.0", "no matching overload for math.ceil(int)");
    check_compile_error("math.greatest('a', 1) == 1", "no matching overload for math.greatest(string, int)");
}

#[test]
fn bindings() {
    check("cel.bind(total, action.params.amount * 2.0, total > 200.0 && total < 400.0)", true);
    check("cel.bind(r, agent.roles, r.exists(x, x == 'refunds') && size(r) == 2)", true);
    check("cel.bind(a, 1, cel.bind(b, a + 1, a + b == 3))", true);
    check_compile_error("cel.bind(x, 1, x.startsWith('a'))", "no matching overload for 'startsWith' on int");
    check_compile_error("cel.bind(1, 1, true)", "needs a variable name");
    check_compile_error("cel.bind(x, 1, y == 1)", "undeclared reference to 'y'");
}

#[test]
fn the_lists_and_sets_extensions() {
    check("[1, 2, 3, 4].slice(1, 3) == [2, 3] && [1, 2].slice(0, 0) == []", true);
    check("[1, [2, [3]]].flatten() == [1, 2, [3]] && [1, [2, [3]]].flatten(2) == [1, 2, 3]", true);
    check("[3, 1, 2].sort() == [1, 2, 3] && agent.roles.sort() == ['refunds', 'support']", true);
    check("[1, 2, 1, 3, 2].distinct() == [1, 2, 3]", true);
    check("lists.range(4) == [0, 1, 2, 3] && lists.range(0) == []", true);
    check("sets.contains(agent.roles, ['support']) && !sets.contains(['a'], ['a', 'b'])", true);
    check("sets.equivalent([1, 2, 2], [2, 1]) && sets.intersects(action.params.tags, ['eu', 'us'])", true);
    check_eval_error("[1, 2].slice(1, 5) == []", "out of range");
    check_eval_error("[1, 'a'].sort() == []", "sort needs values of one ordered type");
    check_eval_error("lists.range(1000000) == []", "out of range");
    check_compile_error("'abc'.sort() == 'abc'", "no matching overload");
}

#[test]
fn optionals_over_request_params() {
    // The shape Kubernetes policies use for fields that may be absent.
    check("action.params.?refund_reason.orValue('none') == 'none'", true);
    check("action.params.?currency.orValue('USD') == 'EUR'", true);
    check("action.params.customer.?country.hasValue()", true);
    check("action.params.?customer.?region.hasValue()", false);
    check("action.params.tags[?5].orValue('') == ''", true);
    check("agent.labels.?team.optMap(t, t + '-oncall').value() == 'billing-oncall'", true);
    check("[?action.params.?missing, ?optional.of(1)] == [1]", true);
    check("{?'a': optional.none(), 'b': 2} == {'b': 2}", true);
    check_eval_error("action.params.?missing.value() == 'x'", "optional.none() dereference");
    check_compile_error("action.params.?currency.orValue()", "no matching overload for 'orValue'");
}

#[test]
fn network_types() {
    check("cidr('10.0.0.0/8').containsIP(ip('10.1.2.3'))", true);
    // A param that is not an address is a run-time error: the rule denies.
    check_eval_error("cidr('10.0.0.0/8').containsIP(action.params.customer.country)", "parse error");
    check("ip('2001:db8::1').family() == 6 && ip('127.0.0.1').isLoopback()", true);
    check("cidr('192.168.0.1/24').masked() == cidr('192.168.0.0/24')", true);
    check("type(ip('10.0.0.1')) == net.IP", true);
    check_eval_error("ip('fe80::1%en0').family() == 6", "zone");
    check_eval_error("ip('::ffff:10.0.0.1').family() == 6", "IPv4-mapped");
    check_compile_error("isIP(cidr('10.0.0.0/8'))", "no matching overload for isIP(net.CIDR)");
    check_compile_error("ip('10.0.0.1').prefixLength() == 8", "no matching overload for 'prefixLength'");
}

#[test]
fn format_quote_and_two_variable_macros() {
    check("'%s asked %d times: %.2f'.format([agent.id, 3, 1.005]) == 'agent-7 asked 3 times: 1.00'", true);
    check("strings.quote(agent.name) == '\"Support bot\"'", true);
    check("agent.labels.all(k, v, k.size() > 0 && v == 'billing')", true);
    check("agent.roles.transformList(i, r, i == 0, r.upperAscii()) == ['SUPPORT']", true);
    check("agent.labels.transformMap(k, v, v + '!') == {'team': 'billing!'}", true);
    check("agent.roles.existsOne(i, r, r.startsWith('ref'))", true);
    check_compile_error("'%q'.format([1]) == ''", "unrecognized formatting clause \"q\"");
    check_eval_error("'%d %d'.format([1]) == ''", "index 1 out of range");
}

#[test]
fn costly_conditions_are_refused_at_load() {
    // A comprehension over params inside another: quadratic in the request.
    check_compile_error("action.params.tags.all(a, action.params.tags.exists(b, a == b))", "condition may cost up to");
    check_compile_error("lists.range(100000).all(i, lists.range(100000).all(j, i != j))", "the limit is 1000000");
    check_compile_error("action.params.tags.distinct().size() > 1", "distinct() or sets.*");
    // Linear in the request, or nested over the request's bounded roles: fine.
    check("action.params.tags.all(t, t.size() < 10)", true);
    check("agent.roles.all(a, agent.roles.exists(b, a == b))", true);
    check("agent.roles.distinct().size() == 2", true);
    let program = Program::compile("action.params.tags.all(t, t.size() < 10)").unwrap();
    assert!(program.estimated_cost() < super::cost::MAX_COST);
    check_compile_error("'%.500f'.format([1.0]) == ''", "precision must be 0 to 100");
}

#[test]
fn evaluation_past_its_budget_is_an_error() {
    use super::cost::Budget;
    let program = Program::compile("lists.range(1000).all(i, i >= 0)").unwrap();
    let (agent, action) = (agent(), action());
    let input = Input { agent: &agent, action: &action, time: at(NOON), correlation_id: "corr-1" };
    let roomy = Budget::new(10_000);
    assert_eq!(program.evaluate_with(&input, &roomy), Ok(true));
    assert!(roomy.spent() >= 1000 && roomy.spent() <= program.estimated_cost(), "spent {}", roomy.spent());
    let tight = Budget::new(500);
    let error = program.evaluate_with(&input, &tight).unwrap_err();
    assert!(error.0.contains("exceeded its cost budget of 500 units"), "{error}");
}

#[test]
fn sort_by_first_and_last() {
    check("agent.roles.sortBy(r, r.size()) == ['support', 'refunds']", true);
    check("[3, 1, 2].sortBy(x, -x) == [3, 2, 1]", true);
    check("agent.roles.sortBy(r, r).first().value() == 'refunds'", true);
    check("agent.roles.last().orValue('') == 'refunds'", true);
    check("[].first().hasValue()", false);
    // Mixed types have no order: an error (the rule denies), never a panic
    // or an arbitrary order.
    check_eval_error("[1, 'a', 2.0].sort() == []", "sort needs values of one ordered type");
    check_eval_error("[1.0, double('NaN')].sort() == []", "sort needs values of one ordered type");
    check_eval_error("action.params.tags.sortBy(t, t == 'vip' ? 1 : 'x') == []", "one ordered type");
    check_compile_error("agent.roles.sortBy(r, [r]) == []", "sortBy() needs a key that can be ordered");
}

#[test]
fn the_budget_stops_a_request_larger_than_the_estimate_assumed() {
    // The estimate assumes params lists of up to 4,096 items; a request
    // with more is still stopped, by the run-time budget.
    let program = Program::compile_with_max_cost("action.params.items.all(x, x != 'z')", 10_000).unwrap();
    assert!(program.estimated_cost() <= 10_000);
    let items = |n: usize| ProtoValue {
        kind: Some(Kind::ListValue(prost_types::ListValue { values: (0..n).map(|_| text("a")).collect() })),
    };
    let agent = agent();
    for (n, expected) in [(100, Ok(true)), (20_000, Err(()))] {
        let action = Action { params: Some(Struct { fields: [("items".to_string(), items(n))].into() }), ..action() };
        let input = Input { agent: &agent, action: &action, time: at(NOON), correlation_id: "corr-1" };
        match (program.evaluate(&input), expected) {
            (Ok(result), Ok(want)) => assert_eq!(result, want),
            (Err(error), Err(())) => assert!(error.0.contains("exceeded its cost budget of 10000 units"), "{error}"),
            (got, want) => panic!("{n} items: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn regular_expressions_are_bounded() {
    // Compiled size is bounded: a pattern that expands to millions of states
    // is a load error, not a slow or memory-hungry condition.
    check_compile_error("agent.id.matches('(a{1000}){1000}')", "invalid regular expression");
    // A pattern taken from the request is bounded in length too.
    check_eval_error(
        &format!("agent.id.matches(action.params.currency + '{}')", "x".repeat(1100)),
        "the limit for one computed at run time is 1024",
    );
    check("agent.id.matches(action.params.currency.lowerAscii() + '|agent-[0-9]')", true);
}
