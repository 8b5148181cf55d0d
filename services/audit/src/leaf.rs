//! What a leaf commits to, byte for byte.
//!
//! The leaf data is a length-prefixed encoding of the event's fields, the
//! SHA-256 of its canonical payload JSON, and the SHA-256 of its sealed
//! sensitive fields. Committing to the payload's hash (not the payload)
//! lets retention delete old payloads while every leaf still verifies.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use sha2::{Digest, Sha256};
use warden_merkle::Hash;

/// Domain tag of version 1 of the leaf encoding.
const LEAF_V1: &[u8] = b"warden.audit.leaf.v1\n";

/// The fields of a stored event that its leaf commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFields<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub time_micros: i64,
    pub correlation_id: &'a str,
    pub agent_id: &'a str,
    pub actor: &'a str,
    pub subject: &'a str,
    pub payload_hash: &'a Hash,
    pub sensitive: Option<&'a [u8]>,
}

impl LeafFields<'_> {
    pub fn data(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(LEAF_V1);
        for text in [self.event_id, self.event_type] {
            put(&mut out, text.as_bytes());
        }
        out.extend_from_slice(&self.time_micros.to_be_bytes());
        for text in [self.correlation_id, self.agent_id, self.actor, self.subject] {
            put(&mut out, text.as_bytes());
        }
        out.extend_from_slice(self.payload_hash);
        out.extend_from_slice(&sensitive_hash(self.sensitive));
        out
    }

    pub fn leaf_hash(&self) -> Hash {
        warden_merkle::leaf_hash(&self.data())
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn sensitive_hash(sealed: Option<&[u8]>) -> Hash {
    match sealed {
        None => [0; 32],
        Some(bytes) => Sha256::digest(bytes).into(),
    }
}

pub fn payload_hash(canonical_json: &str) -> Hash {
    Sha256::digest(canonical_json.as_bytes()).into()
}

/// The canonical JSON of a Struct: keys sorted, no spaces, numbers in
/// shortest round-trip form. Non-finite numbers cannot be represented and
/// are an error naming their path.
pub fn canonical_json(value: Option<&Struct>) -> Result<String, String> {
    let json = match value {
        None => serde_json::Value::Object(serde_json::Map::new()),
        Some(s) => struct_to_json(s, "")?,
    };
    Ok(serde_json::to_string(&json).expect("JSON values always serialise"))
}

fn struct_to_json(value: &Struct, path: &str) -> Result<serde_json::Value, String> {
    // BTreeMap iteration is sorted, so the output is canonical whatever
    // serde_json's map type is.
    let mut map = serde_json::Map::new();
    for (key, item) in &value.fields {
        map.insert(key.clone(), value_to_json(item, &format!("{path}.{key}"))?);
    }
    Ok(serde_json::Value::Object(map))
}

fn value_to_json(value: &Value, path: &str) -> Result<serde_json::Value, String> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{} is not a finite number", path.trim_start_matches('.')))?,
        Some(Kind::StructValue(s)) => struct_to_json(s, path)?,
        Some(Kind::ListValue(l)) => serde_json::Value::Array(
            l.values
                .iter()
                .enumerate()
                .map(|(i, v)| value_to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Parses stored canonical JSON back into a Struct.
pub fn json_to_struct(text: &str) -> Option<Struct> {
    match serde_json::from_str::<serde_json::Value>(text).ok()? {
        serde_json::Value::Object(map) => {
            Some(Struct { fields: map.into_iter().map(|(k, v)| (k, json_to_value(v))).collect() })
        }
        _ => None,
    }
}

fn json_to_value(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => {
            Kind::ListValue(ListValue { values: items.into_iter().map(json_to_value).collect() })
        }
        serde_json::Value::Object(map) => {
            Kind::StructValue(Struct { fields: map.into_iter().map(|(k, v)| (k, json_to_value(v))).collect() })
        }
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: f64) -> Value {
        Value { kind: Some(Kind::NumberValue(n)) }
    }

    #[test]
    fn canonical_json_is_sorted_and_round_trips() {
        let s = Struct {
            fields: [
                ("zeta".to_string(), number(1.5)),
                ("alpha".to_string(), Value { kind: Some(Kind::StringValue("x".into())) }),
                (
                    "list".to_string(),
                    Value { kind: Some(Kind::ListValue(ListValue { values: vec![number(1.0), number(2.0)] })) },
                ),
            ]
            .into(),
        };
        let json = canonical_json(Some(&s)).unwrap();
        assert_eq!(json, r#"{"alpha":"x","list":[1.0,2.0],"zeta":1.5}"#);
        assert_eq!(canonical_json(json_to_struct(&json).as_ref()).unwrap(), json);
        assert_eq!(canonical_json(None).unwrap(), "{}");
        let bad = Struct { fields: [("n".to_string(), number(f64::NAN))].into() };
        assert_eq!(canonical_json(Some(&bad)).unwrap_err(), "n is not a finite number");
    }

    #[test]
    fn every_field_changes_the_leaf() {
        let hash = payload_hash("{}");
        let base = LeafFields {
            event_id: "e",
            event_type: "t",
            time_micros: 1,
            correlation_id: "c",
            agent_id: "a",
            actor: "p",
            subject: "s",
            payload_hash: &hash,
            sensitive: None,
        };
        let other_hash = payload_hash("{\"x\":1}");
        let variants = [
            LeafFields { event_id: "f", ..base.clone() },
            LeafFields { event_type: "u", ..base.clone() },
            LeafFields { time_micros: 2, ..base.clone() },
            LeafFields { correlation_id: "d", ..base.clone() },
            LeafFields { agent_id: "b", ..base.clone() },
            LeafFields { actor: "q", ..base.clone() },
            LeafFields { subject: "t", ..base.clone() },
            LeafFields { payload_hash: &other_hash, ..base.clone() },
            LeafFields { sensitive: Some(b"x"), ..base.clone() },
            // Length prefixes keep field boundaries: "ab"+"" differs from "a"+"b".
            LeafFields { event_id: "et", event_type: "", ..base.clone() },
        ];
        for variant in variants {
            assert_ne!(variant.leaf_hash(), base.leaf_hash(), "{variant:?}");
        }
    }
}
