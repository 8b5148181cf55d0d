//! Protobuf's JSON-like values (`google.protobuf.Struct`, `Value`: an
//! action's params, an audit event's payload) to and from `serde_json`, as
//! JSON: `{"amount": 300}`, never prost's `Debug` text.

use prost_types::value::Kind;

/// JSON of a protobuf `Value`. Object keys come out sorted (serde_json's
/// map is ordered), so equal values have equal text; a number that JSON
/// cannot hold (NaN, an infinity) becomes `null`.
pub fn value_to_json(value: &prost_types::Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map(serde_json::Value::Number).unwrap_or_default()
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(list.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// JSON object of a protobuf `Struct`.
pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

/// A protobuf `Value` of JSON (numbers become `f64`, as protobuf holds
/// them).
pub fn json_to_value(json: &serde_json::Value) -> prost_types::Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(json_to_value).collect() })
        }
        serde_json::Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A protobuf `Struct` of a JSON object.
pub fn json_to_struct(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct { fields: map.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_read_as_json_and_come_back_unchanged() {
        let json = serde_json::json!({
            "amount": 300.5, "currency": "EUR", "notify": true, "note": null,
            "items": [1.0, "two", {"three": 3.0}], "customer": {"id": "c-42", "tags": []},
        });
        let params = json_to_struct(json.as_object().expect("an object"));
        assert_eq!(struct_to_json(&params), json);
        assert_eq!(
            serde_json::to_string(&struct_to_json(&params)).expect("text"),
            r#"{"amount":300.5,"currency":"EUR","customer":{"id":"c-42","tags":[]},"items":[1.0,"two",{"three":3.0}],"note":null,"notify":true}"#,
            "keys sorted, values as JSON"
        );
    }

    #[test]
    fn numbers_json_cannot_hold_become_null() {
        for n in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let value = prost_types::Value { kind: Some(Kind::NumberValue(n)) };
            assert_eq!(value_to_json(&value), serde_json::Value::Null);
        }
        assert_eq!(value_to_json(&prost_types::Value { kind: None }), serde_json::Value::Null);
    }
}
