//! What a condition may cost: an estimate of the worst case made at load,
//! and the budget that bounds evaluation at run time.
//!
//! Cost is counted in units of work that can grow with the input:
//! one per comprehension iteration, one per list or map element built, one
//! per 64 bytes of string or bytes built, and the comparisons of `sort`,
//! `distinct` and the sets functions. Everything else a condition does is
//! bounded by its length (conditions are at most 4 KiB).
//!
//! The estimate assumes the request's own bounds where the policy engine
//! sets them (64 roles and 64 labels of at most 256 bytes) and, for what
//! `action.params` holds, lists of up to 4,096 items of up to 1 KiB each
//! (the engine accepts 64 KiB of params in all). A condition whose
//! estimate is over [`MAX_COST`] is refused at load; whatever the input,
//! evaluation stops with an error once it has spent [`MAX_COST`].

use std::cell::Cell;

use super::lists::MAX_RANGE;
use super::parse::{BinaryOp, Expr, ExprKind, Literal, OPTIONAL_ENTRY};
use super::strings::MAX_RESULT_BYTES;
use super::value::{EvalError, Value};

/// The most a condition may cost, estimated at load and spent at run time.
/// About ten milliseconds of evaluation on this project's reference machine.
pub const MAX_COST: u64 = 1_000_000;

/// What the estimate assumes of a value from `action.params` or a declared
/// variable.
const PARAMS: Size = Size { count: 4096, bytes: 65_536, item: 1024 };
/// `agent.roles` and `agent.labels`.
const ROLES: Size = Size { count: 64, bytes: 64 * 256, item: 256 };
/// A string field of the request.
const TEXT: Size = Size { count: 0, bytes: 1024, item: 0 };

/// The run-time budget of one evaluation.
#[derive(Debug)]
pub struct Budget {
    spent: Cell<u64>,
    limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget { spent: Cell::new(0), limit }
    }

    /// Spends `units`; past the limit this is the evaluation's error.
    #[inline]
    pub fn charge(&self, units: u64) -> Result<(), EvalError> {
        self.spent.set(self.spent.get().saturating_add(units));
        self.check()
    }

    /// The budget's error once it is spent. `&&`, `||` and the
    /// comprehensions never absorb it, and evaluation ends with it.
    #[inline]
    pub fn check(&self) -> Result<(), EvalError> {
        if self.exhausted() { Err(self.error()) } else { Ok(()) }
    }

    #[inline]
    pub fn exhausted(&self) -> bool {
        self.spent.get() > self.limit
    }

    #[cold]
    #[inline(never)]
    fn error(&self) -> EvalError {
        EvalError::new(format!("evaluation exceeded its cost budget of {} units", self.limit))
    }

    /// The units spent so far.
    pub fn spent(&self) -> u64 {
        self.spent.get()
    }
}

/// The units a built value is charged: its elements, or its bytes / 64.
pub fn units_of(value: &Value<'_>) -> u64 {
    match value {
        Value::List(list) => list.len() as u64,
        Value::Map(map) => map.len() as u64,
        Value::String(s) => s.len() as u64 / 64,
        Value::Bytes(b) => b.len() as u64 / 64,
        _ => 0,
    }
}

fn log2_ceil(n: u64) -> u64 {
    u64::from(64 - n.saturating_sub(1).leading_zeros())
}

/// Comparisons a function makes beyond building its result: `sort`
/// (n log n), `distinct` (n²), `sets.*` (n × m).
pub fn work(function: &str, sizes: &[u64]) -> u64 {
    match (function, sizes) {
        ("sort", [n, ..]) => n.saturating_mul(log2_ceil(*n)),
        ("distinct", [n, ..]) => n.saturating_mul(*n),
        ("contains" | "intersects", [a, b]) => a.saturating_mul(*b),
        ("equivalent", [a, b]) => a.saturating_mul(*b).saturating_mul(2),
        _ => 0,
    }
}

/// The sizes `work` needs from run-time values.
pub fn sizes<'v>(values: impl IntoIterator<Item = &'v Value<'v>>) -> Vec<u64> {
    values.into_iter().map(|v| if let Value::List(list) = v { list.len() as u64 } else { 0 }).collect()
}

/// The macros whose body runs once per element of their target.
const COMPREHENSIONS: &[&str] = &[
    "all",
    "exists",
    "exists_one",
    "existsOne",
    "map",
    "filter",
    "sortBy",
    "transformList",
    "transformMap",
    "transformMapEntry",
];

/// Whether evaluation must run against a budget: only a loop (a
/// comprehension, `sortBy`, `optMap`) or a superlinear function (`sort`,
/// `distinct`, `sets.*`, `lists.range`) lets the input multiply the work.
/// Anything else costs at most the condition's length times the input's
/// size, which the load-time estimate has already bounded, so ordinary
/// conditions skip the budget's bookkeeping.
pub fn needs_budget(expr: &Expr) -> bool {
    match &expr.kind {
        ExprKind::Literal(_) | ExprKind::Ident(_) => false,
        ExprKind::Select { operand, .. } | ExprKind::Unary(_, operand) => needs_budget(operand),
        ExprKind::Index { operand, index } => needs_budget(operand) || needs_budget(index),
        ExprKind::Binary(_, left, right) => needs_budget(left) || needs_budget(right),
        ExprKind::Ternary(c, t, e) => needs_budget(c) || needs_budget(t) || needs_budget(e),
        ExprKind::List(items) => items.iter().any(needs_budget),
        ExprKind::Map(entries) => entries.iter().any(|(k, v)| needs_budget(k) || needs_budget(v)),
        ExprKind::Call { target, function, args } => {
            let looping = target.is_some()
                && (COMPREHENSIONS.contains(&function.as_str())
                    || matches!(function.as_str(), "optMap" | "optFlatMap" | "sort" | "distinct"));
            let namespace = match target.as_deref().map(|t| &t.kind) {
                Some(ExprKind::Ident(namespace)) => namespace.as_str(),
                _ => "",
            };
            let superlinear = matches!(
                (namespace, function.as_str()),
                ("sets", "contains" | "equivalent" | "intersects") | ("lists", "range")
            );
            looping || superlinear || target.as_deref().is_some_and(needs_budget) || args.iter().any(needs_budget)
        }
    }
}

/// The most elements (`count`) a list or map has, the most bytes it holds
/// in all (nested content included), and the most bytes one element holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    count: u64,
    bytes: u64,
    item: u64,
}

impl Size {
    const SCALAR: Size = Size { count: 0, bytes: 32, item: 0 };

    fn units(self) -> u64 {
        self.count.saturating_add(self.bytes / 64).saturating_add(1)
    }

    /// An element of this list or map, or a value selected from it.
    fn element(self) -> Size {
        Size { count: self.item, bytes: self.item, item: self.item }
    }

    fn plus(self, other: Size) -> Size {
        Size {
            count: self.count.saturating_add(other.count),
            bytes: self.bytes.saturating_add(other.bytes),
            item: self.item.max(other.item),
        }
    }

    fn max(self, other: Size) -> Size {
        Size { count: self.count.max(other.count), bytes: self.bytes.max(other.bytes), item: self.item.max(other.item) }
    }

    fn string(bytes: u64) -> Size {
        Size { count: 0, bytes: bytes.min(MAX_RESULT_BYTES as u64), item: 0 }
    }

    fn list(count: u64, item: Size) -> Size {
        Size { count, bytes: count.saturating_mul(item.bytes.saturating_add(1)), item: item.bytes }
    }
}

/// Estimates the worst-case cost of evaluating `expr`, where `variables`
/// are declared variables (assumed as large as any input).
pub fn estimate(expr: &Expr, variables: &[String]) -> u64 {
    let mut estimator = Estimator { locals: variables.iter().map(|v| (v.clone(), PARAMS)).collect() };
    estimator.estimate(expr).0
}

struct Estimator {
    locals: Vec<(String, Size)>,
}

impl Estimator {
    fn estimate(&mut self, expr: &Expr) -> (u64, Size) {
        match &expr.kind {
            ExprKind::Literal(Literal::String(s)) => (0, Size::string(s.len() as u64)),
            ExprKind::Literal(Literal::Bytes(b)) => (0, Size::string(b.len() as u64)),
            ExprKind::Literal(_) => (0, Size::SCALAR),
            ExprKind::Ident(name) => {
                (0, self.locals.iter().rev().find(|(local, _)| local == name).map_or(PARAMS, |(_, size)| *size))
            }
            ExprKind::Select { operand, field } => {
                if let ExprKind::Ident(message) = &operand.kind
                    && !self.locals.iter().any(|(local, _)| local == message)
                {
                    let size = match (message.as_str(), field.as_str()) {
                        ("agent", "roles" | "labels") => ROLES,
                        ("agent", "id" | "name") | ("action", "type" | "resource") | ("context", "correlation_id") => {
                            TEXT
                        }
                        ("action", "params") => PARAMS,
                        ("agent" | "action" | "context", _) => Size::SCALAR,
                        _ => PARAMS,
                    };
                    return (0, size);
                }
                let (cost, size) = self.estimate(operand);
                (cost, size.element())
            }
            ExprKind::Index { operand, index } => {
                let (c1, size) = self.estimate(operand);
                let (c2, _) = self.estimate(index);
                (c1.saturating_add(c2), size.element())
            }
            ExprKind::List(items) => {
                let mut cost = 0u64;
                let mut size = Size { count: items.len() as u64, bytes: items.len() as u64, item: 0 };
                for item in items {
                    let (c, s) = self.estimate(item);
                    cost = cost.saturating_add(c);
                    size.bytes = size.bytes.saturating_add(s.bytes);
                    size.item = size.item.max(s.bytes);
                }
                (cost.saturating_add(size.units()), size)
            }
            ExprKind::Map(entries) => {
                let mut cost = 0u64;
                let mut size = Size { count: entries.len() as u64, bytes: entries.len() as u64, item: 0 };
                for (key, value) in entries {
                    let (c1, k) = self.estimate(key);
                    let (c2, v) = self.estimate(value);
                    cost = cost.saturating_add(c1).saturating_add(c2);
                    size.bytes = size.bytes.saturating_add(k.bytes).saturating_add(v.bytes);
                    size.item = size.item.max(v.bytes).max(k.bytes);
                }
                (cost.saturating_add(size.units()), size)
            }
            ExprKind::Unary(_, operand) => (self.estimate(operand).0, Size::SCALAR),
            ExprKind::Binary(op, left, right) => {
                let (c1, s1) = self.estimate(left);
                let (c2, s2) = self.estimate(right);
                let cost = c1.saturating_add(c2);
                if *op == BinaryOp::Add {
                    let size = s1.plus(s2);
                    (cost.saturating_add(size.units()), size)
                } else {
                    (cost, Size::SCALAR)
                }
            }
            ExprKind::Ternary(condition, then, otherwise) => {
                let (c0, _) = self.estimate(condition);
                let (c1, s1) = self.estimate(then);
                let (c2, s2) = self.estimate(otherwise);
                (c0.saturating_add(c1.max(c2)), s1.max(s2))
            }
            ExprKind::Call { target, function, args } => self.call(target.as_deref(), function, args),
        }
    }

    fn with_locals<T>(&mut self, locals: &[(&Expr, Size)], f: impl FnOnce(&mut Self) -> T) -> T {
        let depth = self.locals.len();
        for (variable, size) in locals {
            let name = match &variable.kind {
                ExprKind::Ident(name) => name.clone(),
                _ => String::new(),
            };
            self.locals.push((name, *size));
        }
        let result = f(self);
        self.locals.truncate(depth);
        result
    }

    fn call(&mut self, target: Option<&Expr>, function: &str, args: &[Expr]) -> (u64, Size) {
        let namespace = match target.map(|t| &t.kind) {
            Some(ExprKind::Ident(name)) if !self.locals.iter().any(|(local, _)| local == name) => Some(name.as_str()),
            _ => None,
        };
        // Comprehensions: the body runs once per element.
        let comprehension = COMPREHENSIONS.contains(&function);
        if let (true, Some(target)) = (comprehension && args.len() >= 2, target) {
            let (range_cost, range) = self.estimate(target);
            let two = match function {
                "map" | "filter" | "sortBy" => false,
                "all" | "exists" | "exists_one" | "existsOne" => args.len() == 3,
                _ => true,
            };
            let bodies = if two { &args[2..] } else { &args[1..] };
            let locals: Vec<(&Expr, Size)> = if two {
                vec![(&args[0], range.element()), (&args[1], range.element())]
            } else {
                vec![(&args[0], range.element())]
            };
            let (body_cost, body_size) = self.with_locals(&locals, |e| {
                bodies
                    .iter()
                    .map(|b| e.estimate(b))
                    .fold((0u64, Size::SCALAR), |(c, s), (bc, bs)| (c.saturating_add(bc), s.max(bs)))
            });
            let n = range.count;
            let iterations = n.saturating_mul(body_cost.saturating_add(1));
            let result = match function {
                "map" | "transformList" | "transformMap" | "transformMapEntry" => Size::list(n, body_size),
                "filter" | "sortBy" => range,
                _ => Size::SCALAR,
            };
            let sorting = if function == "sortBy" { work("sort", &[n]) } else { 0 };
            return (
                range_cost.saturating_add(iterations).saturating_add(sorting).saturating_add(result.units()),
                result,
            );
        }
        match (namespace, function) {
            (Some("cel"), "bind") if args.len() == 3 => {
                let (init_cost, init) = self.estimate(&args[1]);
                let (body_cost, body) = self.with_locals(&[(&args[0], init)], |e| e.estimate(&args[2]));
                return (init_cost.saturating_add(body_cost), body);
            }
            (None, "optMap" | "optFlatMap") if args.len() == 2 => {
                let (receiver_cost, receiver) = target.map(|t| self.estimate(t)).unwrap_or((0, Size::SCALAR));
                let (body_cost, body) = self.with_locals(&[(&args[0], receiver)], |e| e.estimate(&args[1]));
                return (receiver_cost.saturating_add(body_cost), body);
            }
            (None, "has") => return (args.iter().map(|a| self.estimate(a).0).sum(), Size::SCALAR),
            _ => {}
        }
        let receiver = match (namespace, target) {
            (None, Some(target)) => Some(self.estimate(target)),
            _ => None,
        };
        let arguments: Vec<(u64, Size)> = args.iter().map(|a| self.estimate(a)).collect();
        let cost = receiver.iter().chain(arguments.iter()).fold(0u64, |total, (c, _)| total.saturating_add(*c));
        let recv = receiver.map(|(_, s)| s);
        let arg = |i: usize| arguments.get(i).map_or(Size::SCALAR, |(_, s)| *s);
        let subject = recv.unwrap_or_else(|| arg(0));
        let list_sizes: Vec<u64> = recv.iter().chain(arguments.iter().map(|(_, s)| s)).map(|s| s.count).collect();
        let result = match function {
            "join" => Size::string(subject.bytes.saturating_add(arg(0).bytes.saturating_mul(subject.count))),
            "split" => Size::list(subject.bytes.saturating_add(1), Size::string(subject.bytes)),
            "replace" => {
                Size::string(subject.bytes.saturating_add(subject.bytes.saturating_add(1).saturating_mul(arg(1).bytes)))
            }
            // Each clause writes at most twice its argument's bytes (`%x` of a
            // string) or a number of at most ~400 characters (precision is
            // at most 100).
            "format" => Size::string(
                subject
                    .bytes
                    .saturating_add(arg(0).bytes.saturating_mul(2))
                    .saturating_add(arg(0).count.saturating_mul(400)),
            ),
            "quote" => Size::string(subject.bytes.saturating_mul(6).saturating_add(2)),
            "encode" => Size::string(subject.bytes.saturating_mul(2).saturating_add(4)),
            "flatten" => Size { count: subject.bytes, bytes: subject.bytes, item: subject.item },
            "range" => {
                let n = match args.first().map(|a| &a.kind) {
                    Some(ExprKind::Literal(Literal::Int(n))) => (*n).clamp(0, MAX_RANGE) as u64,
                    _ => MAX_RANGE as u64,
                };
                Size::list(n, Size { count: 0, bytes: 8, item: 0 })
            }
            "string" | "bytes" => Size::string(subject.bytes.saturating_add(32)),
            "first" | "last" | "value" | "orValue" | "or" | "of" | "ofNonZeroValue" | "dyn" | OPTIONAL_ENTRY => {
                subject.max(arg(0))
            }
            _ if receiver.is_some() || !args.is_empty() => subject,
            _ => Size::SCALAR,
        };
        let builds = matches!(
            function,
            "join"
                | "split"
                | "replace"
                | "format"
                | "quote"
                | "encode"
                | "decode"
                | "flatten"
                | "range"
                | "slice"
                | "sort"
                | "distinct"
                | "reverse"
                | "trim"
                | "substring"
                | "charAt"
                | "upperAscii"
                | "lowerAscii"
        );
        let charged = work(function, &list_sizes).saturating_add(if builds { result.units() } else { 0 });
        (cost.saturating_add(charged), result)
    }
}
