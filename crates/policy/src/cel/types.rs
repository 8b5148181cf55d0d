//! Static types of CEL values (`Ty`), the messages a condition sees, and
//! the typing rules the checker and the extension libraries share
//! (operators, assignability, type parameters). Knows no compiler.

use std::fmt;

use super::parse::BinaryOp;

/// Static types. `Dyn` is anything, checked at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Timestamp,
    Duration,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    Message(Message),
    /// A type value (`type(x)`, `int`, ...).
    Type,
    /// `optional_type(T)`: `optional.of(x)`, `m.?key`.
    Optional(Box<Ty>),
    /// Not yet known: the element type of `[]` and `{}` and the value type
    /// of `optional.none()`, which takes the type of whatever it is joined
    /// with in a literal or `?:`. Everywhere else it is `dyn`
    /// ([`Ty::erased`]).
    Free,
    /// A type parameter of a declared function's signature (`T`).
    Param(String),
    /// A declared abstract type: `tuple(int, T)`.
    Abstract(String, Vec<Ty>),
    /// `net.IP`
    Ip,
    /// `net.CIDR`
    Cidr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Agent,
    Action,
    Context,
}

impl Message {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Message::Agent => "agent",
            Message::Action => "action",
            Message::Context => "context",
        }
    }

    pub(crate) fn fields(self) -> &'static [&'static str] {
        match self {
            Message::Agent => &["id", "name", "roles", "confidence", "labels"],
            Message::Action => &["type", "resource", "estimated_cost", "params"],
            Message::Context => &["time", "correlation_id"],
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Dyn => f.write_str("dyn"),
            Ty::Null => f.write_str("null"),
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::String => f.write_str("string"),
            Ty::Bytes => f.write_str("bytes"),
            Ty::Timestamp => f.write_str("timestamp"),
            Ty::Duration => f.write_str("duration"),
            Ty::List(item) => write!(f, "list({item})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Message(m) => f.write_str(m.name()),
            Ty::Type => f.write_str("type"),
            Ty::Optional(inner) => write!(f, "optional_type({inner})"),
            Ty::Free => f.write_str("dyn"),
            Ty::Param(name) => f.write_str(name),
            Ty::Abstract(name, parameters) => {
                let parameters: Vec<String> = parameters.iter().map(Ty::to_string).collect();
                write!(f, "{name}({})", parameters.join(", "))
            }
            Ty::Ip => f.write_str(super::net::IP_TYPE),
            Ty::Cidr => f.write_str(super::net::CIDR_TYPE),
        }
    }
}

impl Ty {
    pub(crate) fn is_dyn(&self) -> bool {
        matches!(self, Ty::Dyn | Ty::Free)
    }

    /// The type with every [`Ty::Free`] made `dyn`.
    pub fn erased(&self) -> Ty {
        match self {
            Ty::Free => Ty::Dyn,
            Ty::List(item) => Ty::List(Box::new(item.erased())),
            Ty::Map(key, value) => Ty::Map(Box::new(key.erased()), Box::new(value.erased())),
            Ty::Optional(inner) => Ty::Optional(Box::new(inner.erased())),
            Ty::Abstract(name, parameters) => Ty::Abstract(name.clone(), parameters.iter().map(Ty::erased).collect()),
            other => other.clone(),
        }
    }

    /// The most specific type both `a` and `b` are: a free type takes the
    /// other's, containers join element-wise, `null` joins an optional, and
    /// anything else that differs is `dyn`.
    pub(crate) fn join(a: &Ty, b: &Ty) -> Ty {
        match (a, b) {
            (Ty::Free, other) | (other, Ty::Free) => other.clone(),
            (a, b) if a == b => a.clone(),
            (Ty::List(x), Ty::List(y)) => Ty::List(Box::new(Ty::join(x, y))),
            (Ty::Map(k1, v1), Ty::Map(k2, v2)) => Ty::Map(Box::new(Ty::join(k1, k2)), Box::new(Ty::join(v1, v2))),
            (Ty::Optional(x), Ty::Optional(y)) => Ty::Optional(Box::new(Ty::join(x, y))),
            (Ty::Abstract(n, xs), Ty::Abstract(m, ys)) if n == m && xs.len() == ys.len() => {
                Ty::Abstract(n.clone(), xs.iter().zip(ys).map(|(x, y)| Ty::join(x, y)).collect())
            }
            (Ty::Null, optional @ Ty::Optional(_)) | (optional @ Ty::Optional(_), Ty::Null) => optional.clone(),
            _ => Ty::Dyn,
        }
    }
    pub(crate) fn is_number(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }
}

/// Unifies a declared parameter type with an argument's type, binding type
/// parameters; false when they cannot match.
pub(crate) fn bind_params(param: &Ty, arg: &Ty, bindings: &mut Vec<(String, Ty)>) -> bool {
    match (param, arg) {
        (Ty::Param(name), arg) => {
            match bindings.iter_mut().find(|(bound, _)| bound == name) {
                Some((_, bound)) => {
                    let joined = Ty::join(bound, arg);
                    // Two different concrete types do not unify; dyn does.
                    if joined == Ty::Dyn && !bound.is_dyn() && !arg.is_dyn() {
                        return false;
                    }
                    *bound = joined;
                }
                None => bindings.push((name.clone(), arg.clone())),
            }
            true
        }
        (_, Ty::Dyn | Ty::Free) | (Ty::Dyn, _) => true,
        (Ty::List(p), Ty::List(a)) | (Ty::Optional(p), Ty::Optional(a)) => bind_params(p, a, bindings),
        (Ty::Map(pk, pv), Ty::Map(ak, av)) => bind_params(pk, ak, bindings) && bind_params(pv, av, bindings),
        (Ty::Abstract(n, ps), Ty::Abstract(m, args)) => {
            n == m && ps.len() == args.len() && ps.iter().zip(args).all(|(p, a)| bind_params(p, a, bindings))
        }
        (p, a) => p == a,
    }
}

/// A declared result type with its type parameters replaced by what they
/// were bound to (unbound ones are `dyn`).
pub(crate) fn substitute(ty: &Ty, bindings: &[(String, Ty)]) -> Ty {
    match ty {
        Ty::Param(name) => bindings.iter().find(|(bound, _)| bound == name).map_or(Ty::Dyn, |(_, t)| t.clone()),
        Ty::List(item) => Ty::List(Box::new(substitute(item, bindings))),
        Ty::Map(k, v) => Ty::Map(Box::new(substitute(k, bindings)), Box::new(substitute(v, bindings))),
        Ty::Optional(inner) => Ty::Optional(Box::new(substitute(inner, bindings))),
        Ty::Abstract(name, ps) => Ty::Abstract(name.clone(), ps.iter().map(|p| substitute(p, bindings)).collect()),
        other => other.clone(),
    }
}

/// Whether a value of type `from` may be passed where `to` is expected.
pub(crate) fn assignable(from: &Ty, to: &Ty) -> bool {
    match (from, to) {
        (Ty::Dyn, _) | (_, Ty::Dyn) => true,
        (Ty::List(a), Ty::List(b)) => assignable(a, b),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => assignable(k1, k2) && assignable(v1, v2),
        (a, b) => a == b,
    }
}

/// The joined type of a literal's elements; free when there are none.
pub(crate) fn common_type<'t>(types: impl Iterator<Item = &'t Ty>) -> Ty {
    types.fold(Ty::Free, |joined, ty| Ty::join(&joined, ty))
}

pub(crate) fn binary_type(op: BinaryOp, l: &Ty, r: &Ty) -> Result<Ty, String> {
    let no_overload = || format!("no matching overload for '{}' with {l} and {r}", op.symbol());
    let either_dyn = l.is_dyn() || r.is_dyn();
    match op {
        BinaryOp::And | BinaryOp::Or => {
            if matches!(l, Ty::Bool | Ty::Dyn) && matches!(r, Ty::Bool | Ty::Dyn) {
                Ok(Ty::Bool)
            } else {
                Err(no_overload())
            }
        }
        BinaryOp::Eq | BinaryOp::Ne => Ok(Ty::Bool),
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            let ok = either_dyn
                || (l.is_number() && r.is_number())
                || (l == r && matches!(l, Ty::Bool | Ty::String | Ty::Bytes | Ty::Timestamp | Ty::Duration));
            if ok { Ok(Ty::Bool) } else { Err(no_overload()) }
        }
        BinaryOp::In => match r {
            Ty::List(_) | Ty::Map(..) | Ty::Dyn => Ok(Ty::Bool),
            _ => Err(no_overload()),
        },
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
            if either_dyn {
                return Ok(Ty::Dyn);
            }
            let result = match (op, l, r) {
                (_, Ty::Int, Ty::Int) => Some(Ty::Int),
                (_, Ty::Uint, Ty::Uint) => Some(Ty::Uint),
                (BinaryOp::Rem, Ty::Double, Ty::Double) => None,
                (_, Ty::Double, Ty::Double) => Some(Ty::Double),
                (BinaryOp::Add, Ty::String, Ty::String) => Some(Ty::String),
                (BinaryOp::Add, Ty::Bytes, Ty::Bytes) => Some(Ty::Bytes),
                (BinaryOp::Add, Ty::List(a), Ty::List(b)) => {
                    Some(Ty::List(Box::new(if a == b { (**a).clone() } else { Ty::Dyn })))
                }
                (BinaryOp::Add, Ty::Timestamp, Ty::Duration) | (BinaryOp::Add, Ty::Duration, Ty::Timestamp) => {
                    Some(Ty::Timestamp)
                }
                (BinaryOp::Add | BinaryOp::Sub, Ty::Duration, Ty::Duration) => Some(Ty::Duration),
                (BinaryOp::Sub, Ty::Timestamp, Ty::Timestamp) => Some(Ty::Duration),
                (BinaryOp::Sub, Ty::Timestamp, Ty::Duration) => Some(Ty::Timestamp),
                _ => None,
            };
            result.ok_or_else(|| {
                let hint = if l.is_number() && r.is_number() {
                    " (CEL does not mix int and double in arithmetic: write 2.0, or convert with double())"
                } else {
                    ""
                };
                format!("{}{hint}", no_overload())
            })
        }
    }
}
