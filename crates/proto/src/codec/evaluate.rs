//! A reader for `EvaluateRequest`, the message every agent action sends,
//! written out for its fields instead of through prost's generic merge
//! machinery.
//!
//! It handles what a client normally sends: every known field, in any
//! order, each singular message at most once. Anything else (an unknown
//! field, a wire type that does not match, a singular message given twice,
//! which prost merges, deep nesting, malformed bytes) makes it answer
//! `None`, and the caller decodes with prost, which then decides exactly as
//! it always does. So this reader must only agree with prost on what it
//! accepts; the property tests check that it does, and that it accepts
//! what prost's own encoder writes.

use std::collections::{BTreeMap, HashMap};

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};

use crate::policy::v1::{Action, Agent, EvaluateRequest};

/// Nesting of `Struct`s and lists this reader follows; deeper goes to
/// prost (whose own limit is 100).
const MAX_DEPTH: u32 = 16;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A varint; most (every key here) are one byte.
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        match self.bytes.split_first() {
            Some((&byte, rest)) if byte < 0x80 => {
                self.bytes = rest;
                Some(u64::from(byte))
            }
            _ => self.long_varint(),
        }
    }

    /// As prost: at most 10 bytes, the tenth at most 1.
    #[cold]
    fn long_varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.bytes.iter().take(10).enumerate() {
            if i == 9 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.bytes = &self.bytes[i + 1..];
                return Some(value);
            }
        }
        None
    }

    /// A field's number and wire type; `None` for a key prost refuses.
    #[inline]
    fn key(&mut self) -> Option<(u64, u8)> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) || key >> 3 == 0 {
            return None;
        }
        Some((key >> 3, (key & 7) as u8))
    }

    fn fixed64(&mut self) -> Option<u64> {
        let (head, rest) = self.bytes.split_first_chunk::<8>()?;
        self.bytes = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn delimited(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.delimited()?).ok().map(str::to_owned)
    }
}

/// `EvaluateRequest` from its encoding, or `None` (see the module's
/// documentation).
pub(crate) fn evaluate_request(bytes: &[u8]) -> Option<EvaluateRequest> {
    let mut reader = Reader::new(bytes);
    let mut request = EvaluateRequest::default();
    while !reader.is_empty() {
        match reader.key()? {
            (1, LEN) if request.agent.is_none() => request.agent = Some(agent(reader.delimited()?)?),
            (2, LEN) if request.action.is_none() => request.action = Some(action(reader.delimited()?)?),
            (3, LEN) if request.time.is_none() => request.time = Some(timestamp(reader.delimited()?)?),
            (4, LEN) => request.correlation_id = reader.string()?,
            (5, LEN) => request.approval_id = reader.string()?,
            _ => return None,
        }
    }
    Some(request)
}

fn agent(bytes: &[u8]) -> Option<Agent> {
    let mut reader = Reader::new(bytes);
    let mut agent = Agent::default();
    while !reader.is_empty() {
        match reader.key()? {
            (1, LEN) => agent.id = reader.string()?,
            (2, LEN) => agent.name = reader.string()?,
            (3, LEN) => agent.roles.push(reader.string()?),
            (4, FIXED64) => agent.confidence = f64::from_bits(reader.fixed64()?),
            (5, LEN) => {
                let (key, value) = label(reader.delimited()?)?;
                if agent.labels.is_empty() {
                    agent.labels = HashMap::with_capacity(4);
                }
                agent.labels.insert(key, value);
            }
            _ => return None,
        }
    }
    Some(agent)
}

/// A `map<string, string>` entry: a missing key or value is empty.
fn label(bytes: &[u8]) -> Option<(String, String)> {
    let mut reader = Reader::new(bytes);
    let (mut key, mut value) = (String::new(), String::new());
    while !reader.is_empty() {
        match reader.key()? {
            (1, LEN) => key = reader.string()?,
            (2, LEN) => value = reader.string()?,
            _ => return None,
        }
    }
    Some((key, value))
}

fn action(bytes: &[u8]) -> Option<Action> {
    let mut reader = Reader::new(bytes);
    let mut action = Action::default();
    while !reader.is_empty() {
        match reader.key()? {
            (1, LEN) => action.r#type = reader.string()?,
            (2, LEN) => action.resource = reader.string()?,
            (3, FIXED64) => action.estimated_cost = f64::from_bits(reader.fixed64()?),
            (4, LEN) if action.params.is_none() => action.params = Some(structure(reader.delimited()?, 1)?),
            _ => return None,
        }
    }
    Some(action)
}

fn timestamp(bytes: &[u8]) -> Option<Timestamp> {
    let mut reader = Reader::new(bytes);
    let mut time = Timestamp::default();
    while !reader.is_empty() {
        match reader.key()? {
            // int64 and int32 as prost reads them: the varint's low bits.
            (1, VARINT) => time.seconds = reader.varint()? as i64,
            (2, VARINT) => time.nanos = reader.varint()? as i32,
            _ => return None,
        }
    }
    Some(time)
}

fn structure(bytes: &[u8], depth: u32) -> Option<Struct> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut reader = Reader::new(bytes);
    let mut fields = BTreeMap::new();
    while !reader.is_empty() {
        match reader.key()? {
            (1, LEN) => {
                let (key, value) = entry(reader.delimited()?, depth)?;
                fields.insert(key, value);
            }
            _ => return None,
        }
    }
    Some(Struct { fields })
}

/// A `map<string, Value>` entry: a missing key is empty, a missing value
/// has no kind.
fn entry(bytes: &[u8], depth: u32) -> Option<(String, Value)> {
    let mut reader = Reader::new(bytes);
    let (mut key, mut value) = (String::new(), None);
    while !reader.is_empty() {
        match reader.key()? {
            (1, LEN) => key = reader.string()?,
            (2, LEN) if value.is_none() => value = Some(self::value(reader.delimited()?, depth)?),
            _ => return None,
        }
    }
    Some((key, value.unwrap_or_default()))
}

fn value(bytes: &[u8], depth: u32) -> Option<Value> {
    let mut reader = Reader::new(bytes);
    let mut kind = None;
    while !reader.is_empty() {
        // A second `kind` replaces or merges in prost: left to it.
        if kind.is_some() {
            return None;
        }
        kind = Some(match reader.key()? {
            (1, VARINT) => Kind::NullValue(reader.varint()? as i32),
            (2, FIXED64) => Kind::NumberValue(f64::from_bits(reader.fixed64()?)),
            (3, LEN) => Kind::StringValue(reader.string()?),
            (4, VARINT) => Kind::BoolValue(reader.varint()? != 0),
            (5, LEN) => Kind::StructValue(structure(reader.delimited()?, depth + 1)?),
            (6, LEN) => Kind::ListValue(list(reader.delimited()?, depth + 1)?),
            _ => return None,
        });
    }
    Some(Value { kind })
}

fn list(bytes: &[u8], depth: u32) -> Option<ListValue> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut reader = Reader::new(bytes);
    let mut values = Vec::new();
    while !reader.is_empty() {
        match reader.key()? {
            (1, LEN) => values.push(value(reader.delimited()?, depth)?),
            _ => return None,
        }
    }
    Some(ListValue { values })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    /// What the codec decodes: this reader's answer, else prost's.
    fn decoded(bytes: &[u8]) -> Result<EvaluateRequest, prost::DecodeError> {
        super::super::decode_slice::<EvaluateRequest>(bytes)
    }

    fn same_as_prost(bytes: &[u8]) -> Result<(), TestCaseError> {
        match (decoded(bytes), EvaluateRequest::decode(bytes)) {
            (Ok(ours), Ok(prost)) => prop_assert_eq!(ours, prost),
            (Err(_), Err(_)) => {}
            (ours, prost) => prop_assert!(false, "ours {ours:?}, prost {prost:?}"),
        }
        Ok(())
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z_]{1,12}", "\\PC{0,8}"]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(None),
            any::<i32>().prop_map(|n| Some(Kind::NullValue(n))),
            any::<f64>().prop_map(|n| Some(Kind::NumberValue(n))),
            text().prop_map(|s| Some(Kind::StringValue(s))),
            any::<bool>().prop_map(|b| Some(Kind::BoolValue(b))),
        ];
        leaf.prop_map(|kind| Value { kind }).prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::btree_map(text(), inner.clone(), 0..4)
                    .prop_map(|fields| Value { kind: Some(Kind::StructValue(Struct { fields })) }),
                proptest::collection::vec(inner, 0..4)
                    .prop_map(|values| Value { kind: Some(Kind::ListValue(ListValue { values })) }),
            ]
        })
    }

    prop_compose! {
        fn request()(
            id in text(), name in text(), roles in proptest::collection::vec(text(), 0..3),
            confidence in any::<f64>(), labels in proptest::collection::hash_map(text(), text(), 0..3),
            has_agent in any::<bool>(), has_action in any::<bool>(),
            kind in text(), resource in text(), cost in any::<f64>(),
            params in proptest::option::of(proptest::collection::btree_map(text(), value(), 0..4)),
            time in proptest::option::of((any::<i64>(), any::<i32>())),
            correlation_id in text(), approval_id in text(),
        ) -> EvaluateRequest {
            EvaluateRequest {
                agent: has_agent.then_some(Agent { id, name, roles, confidence, labels }),
                action: has_action.then(|| Action {
                    r#type: kind, resource, estimated_cost: cost, params: params.map(|fields| Struct { fields }),
                }),
                time: time.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                correlation_id,
                approval_id,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// What prost's encoder writes, this reader reads itself (the codec
        /// never falls back for it), to the same message.
        #[test]
        fn reads_what_prost_writes(request in request()) {
            let bytes = request.encode_to_vec();
            prop_assert_eq!(evaluate_request(&bytes), Some(request));
        }

        /// Two messages back to back are one merged message in protobuf:
        /// last scalar wins, repeated fields append, messages merge.
        #[test]
        fn concatenated_messages_decode_as_prost_merges_them(first in request(), second in request()) {
            let mut bytes = first.encode_to_vec();
            bytes.extend(second.encode_to_vec());
            same_as_prost(&bytes)?;
        }

        /// Damaged bytes: the codec accepts and refuses what prost does.
        #[test]
        fn damaged_bytes_decode_as_prost_decodes_them(
            request in request(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = request.encode_to_vec();
            if bytes.is_empty() {
                return Ok(());
            }
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            same_as_prost(&bytes)?;
            let cut = cut.index(bytes.len());
            same_as_prost(&bytes[..cut])?;
        }

        #[test]
        fn arbitrary_bytes_decode_as_prost_decodes_them(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            same_as_prost(&bytes)?;
        }
    }

    #[test]
    fn unknown_fields_and_deep_nesting_go_to_prost() {
        // Field 9 of EvaluateRequest, a varint: unknown here, skipped by prost.
        let mut bytes = EvaluateRequest { correlation_id: "c".into(), ..Default::default() }.encode_to_vec();
        bytes.extend([9 << 3, 1]);
        assert_eq!(evaluate_request(&bytes), None);
        assert_eq!(decoded(&bytes).unwrap().correlation_id, "c");

        let mut nested = Value { kind: Some(Kind::BoolValue(true)) };
        for _ in 0..=MAX_DEPTH {
            nested = Value { kind: Some(Kind::ListValue(ListValue { values: vec![nested] })) };
        }
        let request = EvaluateRequest {
            action: Some(Action {
                params: Some(Struct { fields: [("deep".to_owned(), nested)].into() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        assert_eq!(evaluate_request(&bytes), None);
        assert_eq!(decoded(&bytes).unwrap(), request);
    }
}
