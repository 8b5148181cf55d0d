//! Fast paths: comparisons of a request field with a constant (or with
//! another field) compiled to predicates that read the field directly,
//! without building a `Value`.

use super::*;

// === Fast paths ===

/// Operands whose value can be read without going through `Value`.
#[derive(Debug, Clone)]
pub(super) enum Leaf {
    Const(Value<'static>),
    Field(Field),
    /// `agent.labels.KEY`
    Label(Arc<str>),
    /// `action.params.KEY`
    Param(Arc<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    AgentId,
    AgentName,
    AgentRoles,
    AgentConfidence,
    AgentLabels,
    ActionType,
    ActionResource,
    ActionCost,
    ActionParams,
    ContextCorrelationId,
}

impl Field {
    pub(super) fn of(message: &str, field: &str) -> Option<Field> {
        Some(match (message, field) {
            ("agent", "id") => Field::AgentId,
            ("agent", "name") => Field::AgentName,
            ("agent", "roles") => Field::AgentRoles,
            ("agent", "confidence") => Field::AgentConfidence,
            ("agent", "labels") => Field::AgentLabels,
            ("action", "type") => Field::ActionType,
            ("action", "resource") => Field::ActionResource,
            ("action", "estimated_cost") => Field::ActionCost,
            ("action", "params") => Field::ActionParams,
            ("context", "correlation_id") => Field::ContextCorrelationId,
            _ => return None,
        })
    }

    pub(super) fn number(self, input: &Input<'_>) -> Option<f64> {
        match self {
            Field::AgentConfidence => Some(input.agent.confidence),
            Field::ActionCost => Some(input.action.estimated_cost),
            _ => None,
        }
    }

    pub(super) fn is_number(self) -> bool {
        matches!(self, Field::AgentConfidence | Field::ActionCost)
    }

    pub(super) fn text<'a>(self, input: &Input<'a>) -> Option<&'a str> {
        match self {
            Field::AgentId => Some(&input.agent.id),
            Field::AgentName => Some(&input.agent.name),
            Field::ActionType => Some(&input.action.r#type),
            Field::ActionResource => Some(&input.action.resource),
            Field::ContextCorrelationId => Some(input.correlation_id),
            _ => None,
        }
    }

    pub(super) fn is_text(self) -> bool {
        matches!(
            self,
            Field::AgentId | Field::AgentName | Field::ActionType | Field::ActionResource | Field::ContextCorrelationId
        )
    }
}

pub(super) fn literal_constant(literal: &Literal) -> Value<'static> {
    match literal {
        Literal::Null => Value::Null,
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Int(i) => Value::Int(*i),
        Literal::Uint(u) => Value::Uint(*u),
        Literal::Double(d) => Value::Double(*d),
        Literal::String(s) => Value::string(s.as_str()),
        Literal::Bytes(b) => Value::Bytes(b.as_slice().into()),
    }
}

pub(super) fn flip(op: BinaryOp) -> BinaryOp {
    match op {
        BinaryOp::Lt => BinaryOp::Gt,
        BinaryOp::Le => BinaryOp::Ge,
        BinaryOp::Gt => BinaryOp::Lt,
        BinaryOp::Ge => BinaryOp::Le,
        other => other,
    }
}

/// Applies an ordering operator, or equality, to a comparison result.
pub(super) fn ordered(op: BinaryOp, ordering: std::cmp::Ordering) -> bool {
    match op {
        BinaryOp::Eq => ordering.is_eq(),
        BinaryOp::Ne => !ordering.is_eq(),
        BinaryOp::Lt => ordering.is_lt(),
        BinaryOp::Le => ordering.is_le(),
        BinaryOp::Gt => ordering.is_gt(),
        _ => ordering.is_ge(),
    }
}

pub(super) fn is_comparison(op: BinaryOp) -> bool {
    matches!(op, BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge)
}

pub(super) fn constant_strings(value: &Value<'_>) -> Option<Arc<[Arc<str>]>> {
    let Value::List(list) = value else {
        return None;
    };
    list.iter()
        .map(|item| match item {
            Value::String(s) => Some(Arc::<str>::from(&*s)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .map(Arc::from)
}

/// Reads a label. Agents carry few labels, so a scan beats hashing the key.
pub(super) fn label<'a>(input: &Input<'a>, key: &str) -> Option<&'a str> {
    let labels = &input.agent.labels;
    if labels.len() <= 8 {
        labels.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v.as_str())
    } else {
        labels.get(key).map(String::as_str)
    }
}

pub(super) fn missing_key(key: &str) -> EvalError {
    EvalError::new(format!("no such key: '{key}'"))
}

/// A closure for `left op right` that reads its operands directly, with the
/// same results and errors as the general path. `None` when no fast path fits.
pub(super) fn specialize(op: BinaryOp, left: Leaf, right: Leaf) -> Option<Predicate> {
    if is_comparison(op) {
        let (op, field, constant) = match (left, right) {
            (Leaf::Const(_), Leaf::Const(_)) => return None,
            (Leaf::Const(c), other) => (flip(op), other, c),
            (other, Leaf::Const(c)) => (op, other, c),
            _ => return None,
        };
        return match (field, constant) {
            (Leaf::Field(f), c @ (Value::Double(_) | Value::Int(_) | Value::Uint(_))) if f.is_number() => {
                let bound = match c {
                    Value::Double(d) => d,
                    Value::Int(i) => i as f64,
                    Value::Uint(u) => u as f64,
                    _ => return None,
                };
                Some(pred(move |s| {
                    let x = f.number(s.input).unwrap_or(f64::NAN);
                    match x.partial_cmp(&bound) {
                        Some(ordering) => Ok(ordered(op, ordering)),
                        None if op == BinaryOp::Eq => Ok(false),
                        None if op == BinaryOp::Ne => Ok(true),
                        None => Err(EvalError::new("comparison with NaN")),
                    }
                }))
            }
            (Leaf::Field(f), Value::String(c)) if f.is_text() => {
                let c: Arc<str> = Arc::from(&*c);
                Some(pred(move |s| Ok(ordered(op, f.text(s.input).unwrap_or_default().cmp(&c)))))
            }
            (Leaf::Label(key), Value::String(c)) => {
                let c: Arc<str> = Arc::from(&*c);
                Some(pred(move |s| match label(s.input, &key) {
                    Some(value) => Ok(ordered(op, value.cmp(&c))),
                    None => Err(missing_key(&key)),
                }))
            }
            (Leaf::Param(key), constant) => Some(pred(move |s| {
                let value = s
                    .input
                    .action
                    .params
                    .as_ref()
                    .and_then(|p| p.fields.get(&*key))
                    .ok_or_else(|| missing_key(&key))?;
                let value = Value::from_proto(value);
                Ok(match op {
                    BinaryOp::Eq => value.equals(&constant),
                    BinaryOp::Ne => !value.equals(&constant),
                    _ => ordered(op, value.compare(&constant, op.symbol())?),
                })
            })),
            _ => None,
        };
    }
    if op != BinaryOp::In {
        return None;
    }
    match (left, right) {
        (Leaf::Const(Value::String(needle)), Leaf::Field(Field::AgentRoles)) => {
            let needle: Arc<str> = Arc::from(&*needle);
            Some(pred(move |s| Ok(s.input.agent.roles.iter().any(|role| **role == *needle))))
        }
        (Leaf::Field(f), Leaf::Const(list)) if f.is_text() => {
            let options = constant_strings(&list)?;
            Some(pred(move |s| {
                let text = f.text(s.input).unwrap_or_default();
                Ok(options.iter().any(|option| **option == *text))
            }))
        }
        (Leaf::Label(key), Leaf::Const(list)) => {
            let options = constant_strings(&list)?;
            Some(pred(move |s| match label(s.input, &key) {
                Some(text) => Ok(options.iter().any(|option| **option == *text)),
                None => Err(missing_key(&key)),
            }))
        }
        (Leaf::Param(key), Leaf::Const(list)) => {
            let options = constant_strings(&list)?;
            Some(pred(move |s| {
                let value = s
                    .input
                    .action
                    .params
                    .as_ref()
                    .and_then(|p| p.fields.get(&*key))
                    .ok_or_else(|| missing_key(&key))?;
                Ok(match &value.kind {
                    Some(prost_types::value::Kind::StringValue(text)) => {
                        options.iter().any(|option| **option == **text)
                    }
                    // Only strings can equal a string.
                    _ => false,
                })
            }))
        }
        _ => None,
    }
}
