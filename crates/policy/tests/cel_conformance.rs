//! Runs the official CEL conformance data (google/cel-spec
//! `tests/simple/testdata`, copied with its licence into `tests/cel-spec/`)
//! through the same parse-check-compile-evaluate path that policy
//! conditions use.
//!
//! Every case runs. A case listed in `tests/cel-spec/skipped.txt` may fail,
//! for the reason its group gives; a listed case that passes fails the test,
//! so the list never hides a case that works. Set `WARDEN_CEL_SPEC_REPORT=1`
//! to print every failure and the per-file counts `docs/src/policies.md` quotes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value as Field};
use warden_policy::cel::value::{List, Map};
use warden_policy::cel::{Env, Expression, FunctionDecl, Input, Ty, Value};
use warden_proto::policy::v1::{Action, Agent};

/// The core files and the extension libraries Warden implements.
const FILES: &[&str] = &[
    "basic",
    "comparisons",
    "conversions",
    "fields",
    "fp_math",
    "integer_math",
    "lists",
    "logic",
    "macros",
    "parse",
    "plumbing",
    "string",
    "timestamps",
    "type_deduction",
    "string_ext",
    "math_ext",
    "encoders_ext",
    "optionals",
    "bindings_ext",
    "macros2",
    "network_ext",
    "block_ext",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cel-spec")
}

fn pool() -> DescriptorPool {
    let files = [
        "cel/expr/conformance/test/simple.proto",
        "cel/expr/conformance/proto2/test_all_types.proto",
        "cel/expr/conformance/proto2/test_all_types_extensions.proto",
        "cel/expr/conformance/proto3/test_all_types.proto",
    ];
    let descriptors = protox::compile(files, [root().join("proto")]).expect("the cel-spec protos compile");
    DescriptorPool::from_file_descriptor_set(descriptors).expect("a descriptor pool")
}

/// `skipped.txt`: groups of case ids (`file/section/test`), each group under
/// a `[reason] why` line. Returns each case's reason.
fn skipped() -> HashMap<String, String> {
    let text = std::fs::read_to_string(root().join("skipped.txt")).expect("skipped.txt");
    let mut reason = String::new();
    let mut cases = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((group, _why)) = line.strip_prefix('[').and_then(|l| l.split_once(']')) {
            reason = group.to_owned();
        } else {
            assert!(!reason.is_empty(), "skipped.txt: {line} comes before any [reason]");
            cases.insert(line.to_owned(), reason.clone());
        }
    }
    cases
}

#[derive(Default)]
struct Counts {
    passed: usize,
    skipped: BTreeMap<String, usize>,
}

#[test]
fn cel_spec_conformance() {
    let pool = pool();
    let file_descriptor = pool.get_message_by_name("cel.expr.conformance.test.SimpleTestFile").expect("SimpleTestFile");
    let skipped = skipped();
    let report = std::env::var_os("WARDEN_CEL_SPEC_REPORT").is_some();
    let mut seen = std::collections::HashSet::new();
    let mut unexpected = Vec::new();
    let mut totals: Vec<(&str, Counts)> = Vec::new();
    for file in FILES {
        let text = std::fs::read_to_string(root().join(format!("testdata/{file}.textproto"))).expect("test file");
        let suite = DynamicMessage::parse_text_format(file_descriptor.clone(), &text)
            .unwrap_or_else(|e| panic!("{file}.textproto: {e}"));
        let mut counts = Counts::default();
        for section in messages(&suite, "section") {
            for test in messages(&section, "test") {
                let id = format!("{file}/{}/{}", string(&section, "name"), string(&test, "name"));
                seen.insert(id.clone());
                let outcome = run(&test);
                match (outcome, skipped.get(&id)) {
                    (Ok(()), None) => counts.passed += 1,
                    (Ok(()), Some(_)) => unexpected.push(format!("{id}: passes; remove it from skipped.txt")),
                    (Err(why), Some(reason)) => {
                        *counts.skipped.entry(reason.clone()).or_default() += 1;
                        if report {
                            println!("skipped {id} [{reason}]: {why}");
                        }
                    }
                    (Err(why), None) => {
                        if report {
                            println!("FAIL\t{id}\t{why:?}\t{:?}", string(&test, "expr"));
                        }
                        unexpected.push(format!("{id}: {why}\n    expr: {}", string(&test, "expr")));
                    }
                }
            }
        }
        totals.push((file, counts));
    }
    for id in skipped.keys() {
        if !seen.contains(id) {
            unexpected.push(format!("{id}: listed in skipped.txt but no such case"));
        }
    }
    println!("{:<16} {:>6}  skipped", "file", "passed");
    for (file, counts) in &totals {
        let skipped: Vec<String> = counts.skipped.iter().map(|(reason, n)| format!("{n} ({reason})")).collect();
        println!("{file:<16} {:>6}  {}", counts.passed, skipped.join(", "));
    }
    assert!(unexpected.is_empty(), "{} conformance failures:\n{}", unexpected.len(), unexpected.join("\n"));
}

/// Runs one case: `Err` says how it failed.
fn run(test: &DynamicMessage) -> Result<(), String> {
    let expr = string(test, "expr");
    if bool_field(test, "disable_macros") {
        return Err("macros disabled: Warden always expands macros".into());
    }
    let mut declared: Vec<(String, Ty)> = Vec::new();
    let mut functions = Vec::new();
    for decl in messages(test, "type_env") {
        let name = string(&decl, "name");
        let Some(ident) = optional_message(&decl, "ident") else {
            let function = optional_message(&decl, "function").ok_or("a declaration of neither kind")?;
            let mut overloads = Vec::new();
            for overload in messages(&function, "overloads") {
                let params = messages(&overload, "params").iter().map(ty).collect::<Result<Vec<_>, _>>()?;
                let result = optional_message(&overload, "result_type").map(|t| ty(&t)).transpose()?.unwrap_or(Ty::Dyn);
                overloads.push((params, result));
            }
            functions.push(FunctionDecl { name, overloads });
            continue;
        };
        let ty = optional_message(&ident, "type").map(|t| ty(&t)).transpose()?.unwrap_or(Ty::Dyn);
        declared.push((name, ty));
    }
    let mut values: HashMap<String, Value<'static>> = HashMap::new();
    if let Some(Field::Map(bindings)) = test.get_field_by_name("bindings").map(|v| v.into_owned()) {
        for (key, binding) in bindings {
            let name = match key {
                prost_reflect::MapKey::String(name) => name,
                other => return Err(format!("binding key {other:?}")),
            };
            let binding = binding.as_message().ok_or("binding is not a message")?.clone();
            let Some(value) = optional_message(&binding, "value") else {
                return Err(format!("binding {name} is an error or unknown"));
            };
            values.insert(name, value_of(&value)?);
        }
    }
    for name in values.keys() {
        if !declared.iter().any(|(declared, _)| declared == name) {
            declared.push((name.clone(), Ty::Dyn));
        }
    }
    let env = Env {
        variables: declared.clone(),
        container: string(test, "container"),
        checked: !bool_field(test, "disable_check"),
        functions,
    };
    let compiled = Expression::compile(&expr, &env);
    let check_only = bool_field(test, "check_only");
    let agent = Agent::default();
    let action = Action::default();
    let input = Input { agent: &agent, action: &action, time: Utc::now(), correlation_id: "" };
    let bound: Vec<Value<'static>> =
        declared.iter().map(|(name, _)| values.get(name).cloned().unwrap_or(Value::Null)).collect();
    let matcher = ["value", "typed_result", "eval_error", "any_eval_errors", "unknown", "any_unknowns"]
        .into_iter()
        .find(|name| test.has_field_by_name(name));
    match matcher {
        None | Some("value") => {
            let expected = match matcher {
                Some(_) => value_of(&optional_message(test, "value").expect("has value"))?,
                None => Value::Bool(true),
            };
            let compiled = compiled.map_err(|e| format!("load error: {e}"))?;
            if check_only {
                return Ok(());
            }
            let actual = compiled.evaluate(&input, &bound).map_err(|e| format!("evaluation error: {e}"))?;
            if same(&actual, &expected) { Ok(()) } else { Err(format!("got {actual:?}, want {expected:?}")) }
        }
        Some("typed_result") => {
            let typed = optional_message(test, "typed_result").expect("has typed_result");
            let compiled = compiled.map_err(|e| format!("load error: {e}"))?;
            if let Some(want) = optional_message(&typed, "deduced_type") {
                let want = ty(&want)?;
                if compiled.ty() != want {
                    return Err(format!("deduced type {}, want {want}", compiled.ty()));
                }
            }
            if check_only {
                return Ok(());
            }
            let expected = value_of(&optional_message(&typed, "result").ok_or("typed_result without result")?)?;
            let actual = compiled.evaluate(&input, &bound).map_err(|e| format!("evaluation error: {e}"))?;
            if same(&actual, &expected) { Ok(()) } else { Err(format!("got {actual:?}, want {expected:?}")) }
        }
        Some("eval_error" | "any_eval_errors") => match compiled {
            // With checking enabled, as Warden always has it, cel-go's checker
            // refuses these too: a load error is the stricter outcome.
            Err(_) if bool_field(test, "disable_check") => Ok(()),
            // A type error the checker finds is the error these cases expect
            // when they leave checking on.
            Err(e) if e.message.starts_with("no matching overload") => Ok(()),
            Err(e) => Err(format!("load error instead of an evaluation error: {e}")),
            Ok(compiled) => match compiled.evaluate(&input, &bound) {
                // A function Warden lacks is not the error the case is about.
                Err(e) if e.0.contains("undeclared function") && !expects_unbound_function(test) => {
                    Err(format!("evaluation error: {e}"))
                }
                Err(_) => Ok(()),
                Ok(value) => Err(format!("got {value:?}, want an evaluation error")),
            },
        },
        Some(other) => Err(format!("{other}: Warden has no partial evaluation")),
    }
}

/// Whether the case expects the error of calling a function that does not
/// exist.
fn expects_unbound_function(test: &DynamicMessage) -> bool {
    optional_message(test, "eval_error")
        .map(|set| messages(&set, "errors").iter().any(|e| string(e, "message").contains("unbound function")))
        .unwrap_or(false)
}

/// CEL's static type from a `cel.expr.Type`.
fn ty(t: &DynamicMessage) -> Result<Ty, String> {
    let (field, value) = t.fields().next().ok_or("empty type")?;
    Ok(match field.name() {
        "dyn" => Ty::Dyn,
        "null" => Ty::Null,
        "primitive" => match value.as_enum_number() {
            Some(1) => Ty::Bool,
            Some(2) => Ty::Int,
            Some(3) => Ty::Uint,
            Some(4) => Ty::Double,
            Some(5) => Ty::String,
            Some(6) => Ty::Bytes,
            other => return Err(format!("primitive type {other:?}")),
        },
        "well_known" => match value.as_enum_number() {
            Some(2) => Ty::Timestamp,
            Some(3) => Ty::Duration,
            other => return Err(format!("well-known type {other:?}")),
        },
        "list_type" => {
            let list = value.as_message().ok_or("list_type")?;
            Ty::List(Box::new(optional_message(list, "elem_type").map(|t| ty(&t)).transpose()?.unwrap_or(Ty::Dyn)))
        }
        "map_type" => {
            let map = value.as_message().ok_or("map_type")?;
            let key = optional_message(map, "key_type").map(|t| ty(&t)).transpose()?.unwrap_or(Ty::Dyn);
            let value = optional_message(map, "value_type").map(|t| ty(&t)).transpose()?.unwrap_or(Ty::Dyn);
            Ty::Map(Box::new(key), Box::new(value))
        }
        "type" => Ty::Type,
        "message_type" if value.as_str() == Some("google.protobuf.Timestamp") => Ty::Timestamp,
        "message_type" if value.as_str() == Some("google.protobuf.Duration") => Ty::Duration,
        "message_type" => return Err(format!("message type {}", value.as_str().unwrap_or_default())),
        "wrapper" => return Err("wrapper type".into()),
        "type_param" => Ty::Param(value.as_str().unwrap_or_default().to_owned()),
        "abstract_type" => {
            let abstract_type = value.as_message().ok_or("abstract_type")?;
            if string(abstract_type, "name") == "optional_type" {
                let parameters = messages(abstract_type, "parameter_types");
                let inner = parameters.first().map(ty).transpose()?.unwrap_or(Ty::Dyn);
                return Ok(Ty::Optional(Box::new(inner)));
            }
            let parameters =
                messages(abstract_type, "parameter_types").iter().map(ty).collect::<Result<Vec<_>, _>>()?;
            return Ok(Ty::Abstract(string(abstract_type, "name"), parameters));
        }
        other => return Err(format!("type {other}")),
    })
}

/// A run-time value from a `cel.expr.Value`.
fn value_of(v: &DynamicMessage) -> Result<Value<'static>, String> {
    let Some((field, value)) = v.fields().next() else {
        return Err("empty value".into());
    };
    Ok(match (field.name(), value) {
        ("null_value", _) => Value::Null,
        ("bool_value", Field::Bool(b)) => Value::Bool(*b),
        ("int64_value", Field::I64(i)) => Value::Int(*i),
        ("uint64_value", Field::U64(u)) => Value::Uint(*u),
        ("double_value", Field::F64(d)) => Value::Double(*d),
        ("string_value", Field::String(s)) => Value::string(s.as_str()),
        ("bytes_value", Field::Bytes(b)) => Value::Bytes(b.to_vec().into()),
        ("list_value", Field::Message(list)) => {
            let items = messages(list, "values").iter().map(value_of).collect::<Result<Vec<_>, _>>()?;
            Value::List(List::Owned(Arc::new(items)))
        }
        ("map_value", Field::Message(map)) => {
            let mut entries = Vec::new();
            for entry in messages(map, "entries") {
                let key = value_of(&optional_message(&entry, "key").ok_or("map entry without key")?)?;
                let value = value_of(&optional_message(&entry, "value").ok_or("map entry without value")?)?;
                entries.push((key, value));
            }
            Value::Map(Map::Owned(Arc::new(entries)))
        }
        ("type_value", Field::String(name)) => {
            match warden_policy::cel::value::TYPE_NAMES.iter().find(|t| **t == name.as_str()) {
                Some(name) => Value::Type(name),
                None => return Err(format!("type value {name}")),
            }
        }
        ("object_value", Field::Message(any)) => {
            let type_url = string(any, "type_url");
            let bytes = match any.get_field_by_name("value").as_deref() {
                Some(Field::Bytes(b)) => b.clone(),
                _ => return Err("Any without value".into()),
            };
            match type_url.rsplit('/').next() {
                Some("google.protobuf.Timestamp") => {
                    let t = prost_types::Timestamp::decode(bytes).map_err(|e| e.to_string())?;
                    let nanos = u32::try_from(t.nanos).map_err(|_| "negative nanos")?;
                    Value::Timestamp(DateTime::<Utc>::from_timestamp(t.seconds, nanos).ok_or("timestamp range")?)
                }
                Some("google.protobuf.Duration") => {
                    let d = prost_types::Duration::decode(bytes).map_err(|e| e.to_string())?;
                    Value::Duration(TimeDelta::seconds(d.seconds) + TimeDelta::nanoseconds(i64::from(d.nanos)))
                }
                other => return Err(format!("protobuf message {}", other.unwrap_or_default())),
            }
        }
        ("enum_value", _) => return Err("enum value".into()),
        (other, _) => return Err(format!("value kind {other}")),
    })
}

/// Exact equality: the same kind (an int is not a double here), NaN equal to
/// NaN, lists in order, maps in any order.
fn same(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Uint(x), Value::Uint(y)) => x == y,
        (Value::Double(x), Value::Double(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Value::String(x), Value::String(y)) => **x == **y,
        (Value::Bytes(x), Value::Bytes(y)) => x == y,
        (Value::Timestamp(x), Value::Timestamp(y)) => x == y,
        (Value::Duration(x), Value::Duration(y)) => x == y,
        (Value::Type(x), Value::Type(y)) => x == y,
        (Value::Optional(x), Value::Optional(y)) => match (x, y) {
            (None, None) => true,
            (Some(p), Some(q)) => same(p, q),
            _ => false,
        },
        (Value::List(x), Value::List(y)) => x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| same(&p, &q)),
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.keys().iter().all(|k| {
                    let other_key = y.keys().into_iter().find(|other| same(k, other));
                    match (x.get(k), other_key.and_then(|key| y.get(&key))) {
                        (Some(p), Some(q)) => same(&p, &q),
                        _ => false,
                    }
                })
        }
        _ => false,
    }
}

fn messages(m: &DynamicMessage, name: &str) -> Vec<DynamicMessage> {
    match m.get_field_by_name(name).as_deref() {
        Some(Field::List(items)) => items.iter().filter_map(|i| i.as_message().cloned()).collect(),
        _ => Vec::new(),
    }
}

fn optional_message(m: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    if !m.has_field_by_name(name) {
        return None;
    }
    m.get_field_by_name(name).and_then(|v| v.as_message().cloned())
}

fn string(m: &DynamicMessage, name: &str) -> String {
    m.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn bool_field(m: &DynamicMessage, name: &str) -> bool {
    m.get_field_by_name(name).and_then(|v| v.as_bool()).unwrap_or(false)
}
