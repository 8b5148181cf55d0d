//! Type-checks a parsed condition and compiles it into a tree of closures.
//!
//! Checking happens once, when a policy is loaded: unknown variables and
//! fields, unknown functions, wrong argument counts, bad regular expressions
//! and time zones, and operators applied to types that have no such overload
//! are load errors. What cannot be known statically (values inside
//! `action.params`) is checked at run time; a run-time error makes the rule
//! deny (see `policy`).
//!
//! Compiling rather than interpreting is what makes a decision cost a few
//! hundred nanoseconds: field access on `agent`, `action` and `context` is
//! resolved to a direct field read at load time.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Datelike, FixedOffset, Timelike, Utc};
use chrono_tz::Tz;
use regex::Regex;
use warden_proto::policy::v1::{Action, Agent};

use super::cost::{self, Budget};
use super::parse::{BinaryOp, Expr, ExprKind, Literal, OPTIONAL_ENTRY, OPTIONAL_INDEX, OPTIONAL_SELECT, UnaryOp};
use super::value::{self, EvalError, List, Map, Str, Value};

/// The deepest expression tree a condition may have after parsing.
pub const MAX_TREE_DEPTH: usize = 64;

/// What a condition can see.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub agent: &'a Agent,
    pub action: &'a Action,
    pub time: DateTime<Utc>,
    pub correlation_id: &'a str,
}

/// The input plus the variables bound by enclosing comprehensions, and the
/// evaluation's cost budget.
pub struct Scope<'s, 'a> {
    pub input: &'s Input<'a>,
    pub locals: &'s [Value<'a>],
    /// `None` for a condition without loops, whose cost the input cannot
    /// multiply (see [`cost::needs_budget`]).
    pub budget: Option<&'s Budget>,
}

impl<'s, 'a> Scope<'s, 'a> {
    /// The same input and budget with other locals.
    fn with_locals<'t>(&'t self, locals: &'t [Value<'a>]) -> Scope<'t, 'a> {
        Scope { input: self.input, locals, budget: self.budget }
    }

    #[inline]
    fn charge(&self, units: u64) -> Result<(), EvalError> {
        match self.budget {
            Some(budget) => budget.charge(units),
            None => Ok(()),
        }
    }

    #[inline]
    fn exhausted(&self) -> bool {
        self.budget.is_some_and(Budget::exhausted)
    }
}

pub type Eval = Box<dyn for<'s, 'a> Fn(&Scope<'s, 'a>) -> Result<Value<'a>, EvalError> + Send + Sync>;

fn eval<F>(f: F) -> Eval
where
    F: for<'s, 'a> Fn(&Scope<'s, 'a>) -> Result<Value<'a>, EvalError> + Send + Sync + 'static,
{
    Box::new(f)
}

/// A load-time error at a byte offset of the condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at column {}", self.message, self.offset + 1)
    }
}

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
    fn name(self) -> &'static str {
        match self {
            Message::Agent => "agent",
            Message::Action => "action",
            Message::Context => "context",
        }
    }

    fn fields(self) -> &'static [&'static str] {
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
    pub(super) fn is_dyn(&self) -> bool {
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
    fn join(a: &Ty, b: &Ty) -> Ty {
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
    fn is_number(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }
}

/// A compiled boolean condition.
pub struct Program {
    predicate: Predicate,
    source: Arc<str>,
    estimated_cost: u64,
    /// The condition without its budget, for [`Program::evaluate_with`];
    /// `predicate` adds the budget where [`cost::needs_budget`] says so.
    unbudgeted: Predicate,
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Program").field("source", &self.source).finish()
    }
}

impl Program {
    /// Parses, checks and compiles a condition that must yield a bool, with
    /// the default cost bound ([`cost::MAX_COST`]).
    pub fn compile(source: &str) -> Result<Program, CompileError> {
        Program::compile_with_max_cost(source, cost::MAX_COST)
    }

    /// Like [`Program::compile`], refusing a condition whose estimated cost
    /// is over `max_cost`, which is then also its run-time budget.
    pub fn compile_with_max_cost(source: &str, max_cost: u64) -> Result<Program, CompileError> {
        let compiler =
            Compiler { locals: Vec::new(), checked: true, container: String::new(), globals: 0, functions: Vec::new() };
        let (compiled, estimated_cost, budgeted) = build(source, compiler, max_cost)?;
        match compiled.ty {
            Ty::Bool | Ty::Dyn => {}
            other => {
                return Err(CompileError {
                    offset: 0,
                    message: format!("condition must be a bool, but it is {other}"),
                });
            }
        }
        let predicate = match compiled.predicate {
            Some(predicate) => predicate,
            None => {
                let eval = compiled.eval;
                pred(move |scope| match eval(scope)? {
                    Value::Bool(b) => Ok(b),
                    other => Err(EvalError::new(format!("condition yielded {}, not bool", other.type_name()))),
                })
            }
        };
        let unbudgeted = predicate.clone();
        let predicate = if budgeted {
            pred(move |scope| {
                let budget = Budget::new(max_cost);
                let result = predicate(&Scope { input: scope.input, locals: scope.locals, budget: Some(&budget) });
                budget.check()?;
                result
            })
        } else {
            predicate
        };
        Ok(Program { predicate, source: source.into(), estimated_cost, unbudgeted })
    }

    /// Evaluates the condition. A non-bool result is an error, and so is
    /// spending more than the cost bound it was compiled with.
    #[inline]
    pub fn evaluate(&self, input: &Input<'_>) -> Result<bool, EvalError> {
        (self.predicate)(&Scope { input, locals: &[], budget: None })
    }

    /// Evaluates the condition against `budget`, which says afterwards what
    /// was spent.
    #[inline]
    pub fn evaluate_with(&self, input: &Input<'_>, budget: &Budget) -> Result<bool, EvalError> {
        let result = (self.unbudgeted)(&Scope { input, locals: &[], budget: Some(budget) });
        budget.check()?;
        result
    }

    /// The load-time estimate of the most evaluation may cost.
    pub fn estimated_cost(&self) -> u64 {
        self.estimated_cost
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// What an [`Expression`] is compiled against.
#[derive(Debug, Clone)]
pub struct Env {
    /// Variables in scope with their types (besides `agent`, `action` and
    /// `context`), in the order their values are passed to `evaluate`.
    pub variables: Vec<(String, Ty)>,
    /// A namespace, as cel-spec's `container`: in `com.example`, the name
    /// `x` means `com.example.x` when that is declared, else `x`.
    pub container: String,
    /// False only as cel-spec's `disable_check` cases run: an unknown
    /// variable or function, or an operator applied to the wrong types, is
    /// an error when evaluated rather than when loaded. Policies always
    /// load checked.
    pub checked: bool,
    /// Functions declared by the embedder, checked but not implemented
    /// (cel-spec's `check_only` cases declare them); a call is an error
    /// when evaluated. Policies declare none.
    pub functions: Vec<FunctionDecl>,
}

/// A declared function: its overloads' parameter and result types, which
/// may use type parameters ([`Ty::Param`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDecl {
    pub name: String,
    pub overloads: Vec<(Vec<Ty>, Ty)>,
}

impl Default for Env {
    fn default() -> Self {
        Env { variables: Vec::new(), container: String::new(), checked: true, functions: Vec::new() }
    }
}

/// A compiled expression of any type over declared variables, for code
/// that evaluates CEL outside a rule (the cel-spec conformance suite).
/// Policies use [`Program`].
pub struct Expression {
    eval: Eval,
    ty: Ty,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expression").field("ty", &self.ty).finish()
    }
}

impl Expression {
    /// Parses, checks and compiles `source` in `env`.
    pub fn compile(source: &str, env: &Env) -> Result<Expression, CompileError> {
        let compiler = Compiler {
            locals: env.variables.clone(),
            checked: env.checked,
            container: env.container.clone(),
            globals: env.variables.len(),
            functions: env.functions.clone(),
        };
        let (compiled, _, _) = build(source, compiler, cost::MAX_COST)?;
        Ok(Expression { eval: compiled.eval, ty: compiled.ty })
    }

    /// The expression's static type.
    pub fn ty(&self) -> Ty {
        self.ty.erased()
    }

    /// Evaluates the expression; `variables` holds a value for each declared
    /// variable, in the order they were declared.
    pub fn evaluate<'a>(&self, input: &Input<'a>, variables: &[Value<'a>]) -> Result<Value<'a>, EvalError> {
        let budget = Budget::new(cost::MAX_COST);
        let result = (self.eval)(&Scope { input, locals: variables, budget: Some(&budget) });
        budget.check()?;
        result
    }
}

/// A compiled numeric expression over the request: a limit's `cost`
/// (`action.params.amount`), so a budget charges what the action will
/// spend, not a number the agent chose. Checked at load like a condition:
/// it must be an int, uint or double (or dyn, checked at run time), and
/// its estimated cost is bounded the same way.
pub struct NumberProgram {
    eval: Eval,
    source: Arc<str>,
    max_cost: u64,
    budgeted: bool,
}

impl fmt::Debug for NumberProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumberProgram").field("source", &self.source).finish()
    }
}

impl NumberProgram {
    pub fn compile_with_max_cost(source: &str, max_cost: u64) -> Result<NumberProgram, CompileError> {
        let compiler =
            Compiler { locals: Vec::new(), checked: true, container: String::new(), globals: 0, functions: Vec::new() };
        let (compiled, _, budgeted) = build(source, compiler, max_cost)?;
        match compiled.ty.erased() {
            Ty::Int | Ty::Uint | Ty::Double | Ty::Dyn => {}
            other => {
                return Err(CompileError { offset: 0, message: format!("must be a number, but it is {other}") });
            }
        }
        Ok(NumberProgram { eval: compiled.eval, source: source.into(), max_cost, budgeted })
    }

    /// The expression's value as a double: a finite number >= 0, or an
    /// error (a missing param, a string, a negative or non-finite value).
    pub fn evaluate(&self, input: &Input<'_>) -> Result<f64, EvalError> {
        let budget = Budget::new(self.max_cost);
        let scope = Scope { input, locals: &[], budget: self.budgeted.then_some(&budget) };
        let value = (self.eval)(&scope)?;
        budget.check()?;
        let number = match value {
            Value::Int(i) => i as f64,
            Value::Uint(u) => u as f64,
            Value::Double(d) => d,
            other => return Err(EvalError::new(format!("cost is {}, not a number", other.type_name()))),
        };
        if !number.is_finite() || number < 0.0 {
            return Err(EvalError::new(format!("cost must be a finite number >= 0, got {number}")));
        }
        Ok(number)
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Parses `source`, bounds its depth, checks and compiles it, and
/// estimates its cost, refusing it over `max_cost`; says too whether its
/// evaluation needs a budget.
fn build(source: &str, mut compiler: Compiler, max_cost: u64) -> Result<(Compiled, u64, bool), CompileError> {
    let expr = super::parse::parse(source).map_err(|e| CompileError { offset: e.offset, message: e.message })?;
    let depth = tree_depth(&expr);
    if depth > MAX_TREE_DEPTH {
        return Err(CompileError {
            offset: 0,
            message: format!("expression is {depth} levels deep; the limit is {MAX_TREE_DEPTH}"),
        });
    }
    let compiled = compiler.value(&expr)?;
    let variables: Vec<String> = compiler.locals[..compiler.globals].iter().map(|(name, _)| name.clone()).collect();
    let estimated_cost = cost::estimate(&expr, &variables);
    if estimated_cost > max_cost {
        return Err(CompileError {
            offset: 0,
            message: format!(
                "condition may cost up to {estimated_cost} units to evaluate; the limit is {max_cost} \
                 (the usual causes: a comprehension over request params inside another, \
                 or distinct() or sets.* over request params)"
            ),
        });
    }
    Ok((compiled, estimated_cost, cost::needs_budget(&expr)))
}

fn tree_depth(expr: &Expr) -> usize {
    let children: Vec<&Expr> = match &expr.kind {
        ExprKind::Literal(_) | ExprKind::Ident(_) => vec![],
        ExprKind::Select { operand, .. } => vec![operand],
        ExprKind::Index { operand, index } => vec![operand, index],
        ExprKind::Call { target, args, .. } => target.iter().map(|t| &**t).chain(args.iter()).collect(),
        ExprKind::List(items) => items.iter().collect(),
        ExprKind::Map(entries) => entries.iter().flat_map(|(k, v)| [k, v]).collect(),
        ExprKind::Unary(_, operand) => vec![operand],
        ExprKind::Binary(_, l, r) => vec![l, r],
        ExprKind::Ternary(c, t, e) => vec![c, t, e],
    };
    1 + children.into_iter().map(tree_depth).max().unwrap_or(0)
}

struct Compiled {
    ty: Ty,
    eval: Eval,
    /// The same computation as a plain bool, when the expression is a
    /// condition: conditions made of conditions skip `Value` entirely.
    predicate: Option<Predicate>,
}

impl Compiled {
    fn from_predicate(predicate: Predicate) -> Compiled {
        let shared = predicate.clone();
        Compiled { ty: Ty::Bool, eval: eval(move |s| shared(s).map(Value::Bool)), predicate: Some(predicate) }
    }
}

pub type Predicate = Arc<dyn for<'s, 'a> Fn(&Scope<'s, 'a>) -> Result<bool, EvalError> + Send + Sync>;

fn pred<F>(f: F) -> Predicate
where
    F: for<'s, 'a> Fn(&Scope<'s, 'a>) -> Result<bool, EvalError> + Send + Sync + 'static,
{
    Arc::new(f)
}

struct Compiler {
    /// Comprehension variables in scope, innermost last; a variable's index
    /// is its slot in `Scope::locals`.
    locals: Vec<(String, Ty)>,
    /// False only for unchecked expressions ([`Env::checked`]).
    checked: bool,
    /// [`Env::container`].
    container: String,
    /// How many of `locals` are declared variables rather than
    /// comprehension or `cel.bind` variables.
    globals: usize,
    /// [`Env::functions`].
    functions: Vec<FunctionDecl>,
}

fn err<T>(expr: &Expr, message: impl Into<String>) -> Result<T, CompileError> {
    Err(CompileError { offset: expr.offset, message: message.into() })
}

/// The variable a macro or `cel.bind` introduces: an identifier.
fn variable_name<'e>(function: &str, variable: &'e Expr) -> Result<&'e str, CompileError> {
    match &variable.kind {
        ExprKind::Ident(name) => Ok(name),
        _ => err(variable, format!("{function}() needs a variable name as its first argument")),
    }
}

fn constant(value: Value<'static>) -> Eval {
    eval(move |_| Ok(value.clone()))
}

/// Methods of `net.IP` and `net.CIDR`.
const NET_METHODS: &[&str] = &[
    "family",
    "isUnspecified",
    "isLoopback",
    "isGlobalUnicast",
    "isLinkLocalMulticast",
    "isLinkLocalUnicast",
    "containsIP",
    "containsCIDR",
    "ip",
    "masked",
    "prefixLength",
];

const FUNCTIONS: &[&str] = &[
    "has",
    "size",
    "all",
    "exists",
    "exists_one",
    "existsOne",
    "transformList",
    "transformMap",
    "transformMapEntry",
    "map",
    "filter",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "lowerAscii",
    "upperAscii",
    "charAt",
    "indexOf",
    "lastIndexOf",
    "replace",
    "split",
    "substring",
    "trim",
    "reverse",
    "join",
    "format",
    "hasValue",
    "value",
    "orValue",
    "or",
    "slice",
    "flatten",
    "sort",
    "sortBy",
    "first",
    "last",
    "distinct",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "dyn",
    "type",
    "timestamp",
    "duration",
    "getFullYear",
    "getMonth",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

impl Compiler {
    /// Compiles an expression that must produce a value (not a bare message
    /// such as `agent`).
    fn value(&mut self, expr: &Expr) -> Result<Compiled, CompileError> {
        let mut compiled = self.value_precise(expr)?;
        compiled.ty = compiled.ty.erased();
        Ok(compiled)
    }

    /// [`Compiler::value`] keeping free types, for the constructs that join
    /// their parts' types (literals, `?:`, `optional.of`).
    fn value_precise(&mut self, expr: &Expr) -> Result<Compiled, CompileError> {
        let compiled = self.compile(expr)?;
        if let Ty::Message(message) = compiled.ty {
            return err(
                expr,
                format!("'{}' is not a value; use one of its fields: {}", message.name(), message.fields().join(", ")),
            );
        }
        Ok(compiled)
    }

    fn compile(&mut self, expr: &Expr) -> Result<Compiled, CompileError> {
        match &expr.kind {
            ExprKind::Literal(literal) => Ok(literal_value(literal)),
            ExprKind::Ident(name) => self.ident(expr, name),
            ExprKind::Select { operand, field } => self.select(expr, operand, field),
            ExprKind::Index { operand, index } => self.index(expr, operand, index),
            ExprKind::Call { target, function, args } => self.call(expr, target.as_deref(), function, args),
            ExprKind::List(_) if matches!(self.leaf(expr), Some(Leaf::Const(_))) => {
                let Some(Leaf::Const(value)) = self.leaf(expr) else { unreachable!("checked by the guard") };
                let items = self.value_list_types(expr)?;
                Ok(Compiled { predicate: None, ty: Ty::List(Box::new(items)), eval: constant(value) })
            }
            ExprKind::List(items) if items.iter().any(is_optional_entry) => self.optional_list(items),
            ExprKind::Map(entries) if entries.iter().any(|(key, _)| is_optional_entry(key)) => {
                self.optional_map(entries)
            }
            ExprKind::List(items) => {
                let items = items.iter().map(|item| self.value_precise(item)).collect::<Result<Vec<_>, _>>()?;
                let item_ty = common_type(items.iter().map(|c| &c.ty));
                let evals: Vec<Eval> = items.into_iter().map(|c| c.eval).collect();
                Ok(Compiled {
                    predicate: None,
                    ty: Ty::List(Box::new(item_ty)),
                    eval: eval(move |scope| {
                        scope.charge(evals.len() as u64)?;
                        let values = evals.iter().map(|e| e(scope)).collect::<Result<Vec<_>, _>>()?;
                        Ok(Value::List(List::Owned(Arc::new(values))))
                    }),
                })
            }
            ExprKind::Map(entries) => {
                let mut keys = Vec::new();
                let mut values = Vec::new();
                for (key, value) in entries {
                    let key_compiled = self.value(key)?;
                    if !matches!(key_compiled.ty, Ty::String | Ty::Int | Ty::Uint | Ty::Bool | Ty::Dyn) {
                        return err(
                            key,
                            format!("map keys must be string, int, uint or bool, not {}", key_compiled.ty),
                        );
                    }
                    keys.push(key_compiled);
                    values.push(self.value_precise(value)?);
                }
                let ty = Ty::Map(
                    Box::new(common_type(keys.iter().map(|c| &c.ty))),
                    Box::new(common_type(values.iter().map(|c| &c.ty))),
                );
                let pairs: Vec<(Eval, Eval)> = keys.into_iter().zip(values).map(|(k, v)| (k.eval, v.eval)).collect();
                Ok(Compiled {
                    predicate: None,
                    ty,
                    eval: eval(move |scope| {
                        scope.charge(pairs.len() as u64)?;
                        let mut entries: Vec<(Value<'_>, Value<'_>)> = Vec::with_capacity(pairs.len());
                        for (k, v) in &pairs {
                            let key = k(scope)?;
                            if entries.iter().any(|(existing, _)| existing.equals(&key)) {
                                return Err(EvalError::new("duplicate map key"));
                            }
                            entries.push((key, v(scope)?));
                        }
                        Ok(Value::Map(Map::Owned(Arc::new(entries))))
                    }),
                })
            }
            ExprKind::Unary(op, operand) => self.unary(expr, *op, operand),
            ExprKind::Binary(op, left, right) => self.binary(expr, *op, left, right),
            ExprKind::Ternary(condition, then, otherwise) => {
                let condition_compiled = self.value(condition)?;
                if !matches!(condition_compiled.ty, Ty::Bool | Ty::Dyn) {
                    return err(condition, format!("'?:' needs a bool condition, not {}", condition_compiled.ty));
                }
                let then = self.value_precise(then)?;
                let otherwise = self.value_precise(otherwise)?;
                let ty = Ty::join(&then.ty, &otherwise.ty);
                let (c, t, e) = (condition_compiled.eval, then.eval, otherwise.eval);
                Ok(Compiled {
                    predicate: None,
                    ty,
                    eval: eval(move |scope| match c(scope)? {
                        Value::Bool(true) => t(scope),
                        Value::Bool(false) => e(scope),
                        other => Err(EvalError::new(format!("'?:' condition is {}, not bool", other.type_name()))),
                    }),
                })
            }
        }
    }

    /// The item type of a literal list (for constant-folded lists).
    fn value_list_types(&mut self, expr: &Expr) -> Result<Ty, CompileError> {
        let ExprKind::List(items) = &expr.kind else {
            return Ok(Ty::Dyn);
        };
        let types = items.iter().map(|item| self.value_precise(item).map(|c| c.ty)).collect::<Result<Vec<_>, _>>()?;
        Ok(common_type(types.iter()))
    }

    /// Recognises the shapes that have fast paths: literals (and lists of
    /// literals), fields of the input messages, and label or param lookups
    /// by a literal key. Variables shadowed by a comprehension are not leaves.
    fn leaf(&self, expr: &Expr) -> Option<Leaf> {
        let is_global = |name: &str| !self.locals.iter().any(|(local, _)| local == name);
        match &expr.kind {
            ExprKind::Literal(literal) => Some(Leaf::Const(literal_constant(literal))),
            ExprKind::List(items) => {
                let values = items
                    .iter()
                    .map(|item| match &item.kind {
                        ExprKind::Literal(literal) => Some(literal_constant(literal)),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(Leaf::Const(Value::List(List::Owned(Arc::new(values)))))
            }
            ExprKind::Select { operand, field } => match &operand.kind {
                ExprKind::Ident(name) if is_global(name) => Field::of(name, field).map(Leaf::Field),
                ExprKind::Select { operand: inner, field: map } => match (&inner.kind, map.as_str()) {
                    (ExprKind::Ident(name), "labels") if name == "agent" && is_global(name) => {
                        Some(Leaf::Label(field.as_str().into()))
                    }
                    (ExprKind::Ident(name), "params") if name == "action" && is_global(name) => {
                        Some(Leaf::Param(field.as_str().into()))
                    }
                    _ => None,
                },
                _ => None,
            },
            ExprKind::Index { operand, index } => {
                let ExprKind::Literal(Literal::String(key)) = &index.kind else {
                    return None;
                };
                match self.leaf(operand)? {
                    Leaf::Field(Field::AgentLabels) => Some(Leaf::Label(key.as_str().into())),
                    Leaf::Field(Field::ActionParams) => Some(Leaf::Param(key.as_str().into())),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The slot of the variable `name` means: a local first (comprehension
    /// and `cel.bind` variables shadow everything), then the container's
    /// candidates from the longest (`a.b.name`, `a.name`, `name`).
    fn resolve(&self, name: &str) -> Option<usize> {
        if let Some(slot) = self.locals.iter().rposition(|(local, _)| local == name) {
            return Some(slot);
        }
        // `x.y` where `x` is a comprehension or bind variable: a field of it.
        let first = name.split('.').next().unwrap_or(name);
        if self.locals[self.globals..].iter().any(|(local, _)| local == first) {
            return None;
        }
        let mut prefix = self.container.as_str();
        while !prefix.is_empty() {
            let candidate = format!("{prefix}.{name}");
            if let Some(slot) = self.locals.iter().rposition(|(local, _)| *local == candidate) {
                return Some(slot);
            }
            prefix = prefix.rsplit_once('.').map_or("", |(parent, _)| parent);
        }
        None
    }

    fn ident(&mut self, expr: &Expr, name: &str) -> Result<Compiled, CompileError> {
        if let Some(slot) = self.resolve(name) {
            let ty = self.locals[slot].1.clone();
            return Ok(Compiled { predicate: None, ty, eval: eval(move |scope| Ok(scope.locals[slot].clone())) });
        }
        let message = match name {
            "agent" => Message::Agent,
            "action" => Message::Action,
            "context" => Message::Context,
            _ => {
                if let Some(&type_name) = value::TYPE_NAMES.iter().find(|&&t| t == name) {
                    return Ok(type_value(type_name));
                }
                if !self.checked {
                    return Ok(run_time_error(format!("no such attribute: '{name}'")));
                }
                return err(expr, format!("undeclared reference to '{name}' (variables are agent, action, context)"));
            }
        };
        Ok(Compiled {
            predicate: None,
            ty: Ty::Message(message),
            eval: eval(move |_| Err(EvalError::new(format!("'{}' is not a value", message.name())))),
        })
    }

    fn select(&mut self, expr: &Expr, operand: &Expr, field: &str) -> Result<Compiled, CompileError> {
        // `google.protobuf.Timestamp` and `google.protobuf.Duration` name types.
        if let ExprKind::Select { operand: inner, field: middle } = &operand.kind
            && middle == "protobuf"
            && matches!(&inner.kind, ExprKind::Ident(name) if name == "google" && !self.locals.iter().any(|(l, _)| l == name))
            && let Some(&type_name) =
                value::TYPE_NAMES.iter().find(|&&t| t.strip_prefix("google.protobuf.") == Some(field))
        {
            return Ok(type_value(type_name));
        }
        if let Some(path) = qualified_name(expr)
            && (path == super::net::IP_TYPE || path == super::net::CIDR_TYPE)
            && self.resolve("net").is_none()
            && self.resolve(&path).is_none()
        {
            let name = if path == super::net::IP_TYPE { super::net::IP_TYPE } else { super::net::CIDR_TYPE };
            return Ok(type_value(name));
        }
        // A declared variable whose name has dots (`a.b.c`): the longest
        // declared prefix of the selection wins, as cel-spec resolves it.
        if let Some(path) = qualified_name(expr)
            && let Some(slot) = self.resolve(&path)
        {
            let ty = self.locals[slot].1.clone();
            return Ok(Compiled { predicate: None, ty, eval: eval(move |scope| Ok(scope.locals[slot].clone())) });
        }
        let mut operand = self.compile(operand)?;
        operand.ty = operand.ty.erased();
        if let Ty::Message(message) = operand.ty {
            return message_field(expr, message, field);
        }
        let value_ty = match &operand.ty {
            Ty::Map(key, value) if matches!(**key, Ty::String | Ty::Dyn) => (**value).clone(),
            Ty::Dyn => Ty::Dyn,
            Ty::Optional(inner) => Ty::Optional(Box::new(match &**inner {
                Ty::Map(_, value) => (**value).clone(),
                _ => Ty::Dyn,
            })),
            other => return err(expr, format!("type {other} has no field '{field}'")),
        };
        let field: Arc<str> = field.into();
        let inner = operand.eval;
        Ok(Compiled {
            predicate: None,
            ty: value_ty,
            eval: eval(move |scope| value::select(inner(scope)?, &field, false)),
        })
    }

    fn index(&mut self, expr: &Expr, operand: &Expr, index: &Expr) -> Result<Compiled, CompileError> {
        let operand = self.value(operand)?;
        let index = self.value(index)?;
        let ty = index_type(expr, &operand.ty, &index.ty, false)?;
        let (container, key) = (operand.eval, index.eval);
        Ok(Compiled {
            predicate: None,
            ty,
            eval: eval(move |scope| value::index(container(scope)?, key(scope)?, false)),
        })
    }

    fn unary(&mut self, expr: &Expr, op: UnaryOp, operand: &Expr) -> Result<Compiled, CompileError> {
        let operand = self.value(operand)?;
        if let (UnaryOp::Not, Some(p)) = (op, operand.predicate.clone()) {
            return Ok(Compiled::from_predicate(pred(move |s| p(s).map(|b| !b))));
        }
        let inner = operand.eval;
        match op {
            UnaryOp::Not => {
                if !matches!(operand.ty, Ty::Bool | Ty::Dyn) {
                    return err(expr, format!("no matching overload for '!' on {}", operand.ty));
                }
                Ok(Compiled {
                    predicate: None,
                    ty: Ty::Bool,
                    eval: eval(move |scope| match inner(scope)? {
                        Value::Bool(b) => Ok(Value::Bool(!b)),
                        other => Err(EvalError::new(format!("no such overload: !{}", other.type_name()))),
                    }),
                })
            }
            UnaryOp::Neg => {
                if !matches!(operand.ty, Ty::Int | Ty::Double | Ty::Duration | Ty::Dyn) {
                    return err(expr, format!("no matching overload for '-' on {}", operand.ty));
                }
                Ok(Compiled {
                    predicate: None,
                    ty: operand.ty,
                    eval: eval(move |scope| match inner(scope)? {
                        Value::Int(i) => {
                            i.checked_neg().map(Value::Int).ok_or_else(|| EvalError::new("integer overflow"))
                        }
                        Value::Double(d) => Ok(Value::Double(-d)),
                        Value::Duration(d) => Ok(Value::Duration(-d)),
                        other => Err(EvalError::new(format!("no such overload: -{}", other.type_name()))),
                    }),
                })
            }
        }
    }

    fn binary(&mut self, expr: &Expr, op: BinaryOp, left: &Expr, right: &Expr) -> Result<Compiled, CompileError> {
        let l = self.value(left)?;
        let r = self.value(right)?;
        let ty = match binary_type(op, &l.ty, &r.ty) {
            Ok(ty) => ty,
            Err(_) if !self.checked => Ty::Dyn,
            Err(message) => return Err(CompileError { offset: expr.offset, message }),
        };
        let (left_leaf, right_leaf) = (self.leaf(left), self.leaf(right));
        if let (Some(left_leaf), Some(right_leaf)) = (left_leaf.clone(), right_leaf.clone())
            && let Some(fast) = specialize(op, left_leaf, right_leaf)
        {
            return Ok(Compiled::from_predicate(fast));
        }
        // Comparing with a constant: evaluate one side only and compare with
        // the constant in place.
        let constant_side = match (left_leaf, right_leaf) {
            (_, Some(Leaf::Const(c))) if is_comparison(op) || op == BinaryOp::In => Some((op, c, true)),
            (Some(Leaf::Const(c)), _) if is_comparison(op) => Some((flip(op), c, false)),
            _ => None,
        };
        if let Some((op, constant, operand_is_left)) = constant_side {
            let operand = if operand_is_left { l.eval } else { r.eval };
            return Ok(Compiled::from_predicate(pred(move |scope| {
                let value = operand(scope)?;
                Ok(match op {
                    BinaryOp::Eq => value.equals(&constant),
                    BinaryOp::Ne => !value.equals(&constant),
                    BinaryOp::In => value.is_in(&constant)?,
                    _ => ordered(op, value.compare(&constant, op.symbol())?),
                })
            })));
        }
        if let (BinaryOp::And | BinaryOp::Or, Some(p), Some(q)) = (op, l.predicate.clone(), r.predicate.clone()) {
            return Ok(Compiled::from_predicate(logic(op == BinaryOp::And, p, q)));
        }
        if matches!(
            op,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge | BinaryOp::In
        ) {
            let (a, b) = (l.eval, r.eval);
            return Ok(Compiled::from_predicate(pred(move |scope| {
                let (x, y) = (a(scope)?, b(scope)?);
                Ok(match op {
                    BinaryOp::Eq => x.equals(&y),
                    BinaryOp::Ne => !x.equals(&y),
                    BinaryOp::In => x.is_in(&y)?,
                    _ => ordered(op, x.compare(&y, op.symbol())?),
                })
            })));
        }
        let (a, b) = (l.eval, r.eval);
        let eval = match op {
            // CEL's commutative logic: an error on one side is absorbed when
            // the other side decides the result.
            BinaryOp::And => eval(move |scope| {
                let left = a(scope);
                if matches!(left, Ok(Value::Bool(false))) {
                    return Ok(Value::Bool(false));
                }
                if left.is_err() && scope.exhausted() {
                    return left;
                }
                let right = b(scope);
                match (left, right) {
                    (_, Ok(Value::Bool(false))) => Ok(Value::Bool(false)),
                    (Ok(Value::Bool(true)), Ok(Value::Bool(true))) => Ok(Value::Bool(true)),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                    (Ok(x), Ok(y)) => Err(EvalError::no_overload("&&", &x, &y)),
                }
            }),
            BinaryOp::Or => eval(move |scope| {
                let left = a(scope);
                if matches!(left, Ok(Value::Bool(true))) {
                    return Ok(Value::Bool(true));
                }
                if left.is_err() && scope.exhausted() {
                    return left;
                }
                let right = b(scope);
                match (left, right) {
                    (_, Ok(Value::Bool(true))) => Ok(Value::Bool(true)),
                    (Ok(Value::Bool(false)), Ok(Value::Bool(false))) => Ok(Value::Bool(false)),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                    (Ok(x), Ok(y)) => Err(EvalError::no_overload("||", &x, &y)),
                }
            }),
            BinaryOp::Eq => eval(move |scope| Ok(Value::Bool(a(scope)?.equals(&b(scope)?)))),
            BinaryOp::Ne => eval(move |scope| Ok(Value::Bool(!a(scope)?.equals(&b(scope)?)))),
            BinaryOp::Lt => eval(move |scope| Ok(Value::Bool(a(scope)?.compare(&b(scope)?, "<")?.is_lt()))),
            BinaryOp::Le => eval(move |scope| Ok(Value::Bool(a(scope)?.compare(&b(scope)?, "<=")?.is_le()))),
            BinaryOp::Gt => eval(move |scope| Ok(Value::Bool(a(scope)?.compare(&b(scope)?, ">")?.is_gt()))),
            BinaryOp::Ge => eval(move |scope| Ok(Value::Bool(a(scope)?.compare(&b(scope)?, ">=")?.is_ge()))),
            BinaryOp::In => eval(move |scope| Ok(Value::Bool(a(scope)?.is_in(&b(scope)?)?))),
            BinaryOp::Add => eval(move |scope| {
                let sum = value::add(a(scope)?, b(scope)?)?;
                scope.charge(cost::units_of(&sum))?;
                Ok(sum)
            }),
            BinaryOp::Sub => eval(move |scope| value::sub(a(scope)?, b(scope)?)),
            BinaryOp::Mul => eval(move |scope| value::mul(a(scope)?, b(scope)?)),
            BinaryOp::Div => eval(move |scope| value::div(a(scope)?, b(scope)?)),
            BinaryOp::Rem => eval(move |scope| value::rem(a(scope)?, b(scope)?)),
        };
        Ok(Compiled { predicate: None, ty, eval })
    }

    fn call(
        &mut self,
        expr: &Expr,
        target: Option<&Expr>,
        function: &str,
        args: &[Expr],
    ) -> Result<Compiled, CompileError> {
        // Macros first: their arguments are not ordinary expressions.
        match (function, target) {
            ("has", None) => return self.has(expr, args),
            (OPTIONAL_SELECT | OPTIONAL_INDEX, None) => return self.optional_access(expr, function, args),
            (OPTIONAL_ENTRY, None) => {
                return err(expr, "'?' marks an optional list element or map key only");
            }
            ("optMap" | "optFlatMap", Some(target)) => return self.opt_map(expr, target, function, args),
            ("sortBy", Some(target)) => return self.sort_by(expr, target, args),
            (_, Some(Expr { kind: ExprKind::Ident(namespace), .. }))
                if namespace == "optional" && self.resolve(namespace).is_none() =>
            {
                return self.optional_constructor(expr, function, args);
            }
            ("all" | "exists" | "exists_one" | "existsOne", Some(target)) if args.len() == 3 => {
                return self.comprehension2(expr, target, function, args);
            }
            ("transformList" | "transformMap" | "transformMapEntry", Some(target)) => {
                return self.comprehension2(expr, target, function, args);
            }
            ("all" | "exists" | "exists_one" | "existsOne" | "map" | "filter", Some(target)) => {
                return self.comprehension(expr, target, function, args);
            }
            ("bind", Some(Expr { kind: ExprKind::Ident(namespace), .. }))
                if namespace == "cel" && !self.locals.iter().any(|(local, _)| local == namespace) =>
            {
                return self.bind(expr, args);
            }
            _ => {}
        }
        // `math.greatest(...)`, `base64.encode(...)`: namespaced functions.
        if let Some(ExprKind::Ident(namespace)) = target.map(|t| &t.kind)
            && (super::math::NAMESPACES.contains(&namespace.as_str())
                || super::lists::NAMESPACES.contains(&namespace.as_str())
                || super::strings::NAMESPACES.contains(&namespace.as_str()))
            && !self.locals.iter().any(|(local, _)| local == namespace)
        {
            return self.namespaced(expr, namespace, function, args);
        }
        if target.is_none()
            && let Some(declared) = self.functions.iter().find(|f| f.name == function).cloned()
        {
            return self.declared_call(expr, &declared, args);
        }
        if target.is_none() && super::net::FUNCTIONS.contains(&function) && self.resolve(function).is_none()
            || function == "isCanonical"
                && matches!(target.map(|t| &t.kind), Some(ExprKind::Ident(n)) if n == "ip" && self.resolve(n).is_none())
        {
            let compiled = args.iter().map(|a| self.value(a)).collect::<Result<Vec<_>, _>>()?;
            let types: Vec<Ty> = compiled.iter().map(|c| c.ty.clone()).collect();
            let Some(ty) = super::net::signature(function, &types) else {
                let types: Vec<String> = types.iter().map(Ty::to_string).collect();
                return err(expr, format!("no matching overload for {function}({})", types.join(", ")));
            };
            let name: Arc<str> = function.into();
            let args: Vec<Eval> = compiled.into_iter().map(|c| c.eval).collect();
            return Ok(Compiled {
                predicate: None,
                ty,
                eval: eval(move |scope| {
                    let values = args.iter().map(|a| a(scope)).collect::<Result<Vec<_>, _>>()?;
                    super::net::call(&name, &values)
                }),
            });
        }
        if !FUNCTIONS.contains(&function) && !NET_METHODS.contains(&function) {
            if !self.checked {
                return Ok(run_time_error(format!("undeclared function '{function}'")));
            }
            return err(expr, format!("undeclared function '{function}'"));
        }
        if let Some(fast) = self.fast_call(target, function, args) {
            return Ok(fast);
        }
        let receiver = target.map(|t| self.value(t)).transpose()?;
        let compiled_args = args.iter().map(|a| self.value(a)).collect::<Result<Vec<_>, _>>()?;
        let arity = compiled_args.len();
        match (function, receiver.is_some(), arity) {
            ("size", false, 1) | ("size", true, 0) => {
                let operand = match receiver.or_else(|| compiled_args.into_iter().next()) {
                    Some(operand) => operand,
                    None => return err(expr, "size() takes one argument"),
                };
                if !matches!(operand.ty, Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(..) | Ty::Dyn) {
                    return err(expr, format!("no matching overload for size({})", operand.ty));
                }
                let inner = operand.eval;
                Ok(Compiled {
                    predicate: None,
                    ty: Ty::Int,
                    eval: eval(move |scope| Ok(Value::Int(inner(scope)?.size()?))),
                })
            }
            ("contains" | "startsWith" | "endsWith", true, 1) => {
                let receiver = receiver.expect("method call");
                let arg = compiled_args.into_iter().next().expect("one argument");
                string_receiver(expr, function, &receiver.ty)?;
                string_receiver(expr, function, &arg.ty)?;
                let (s, a) = (receiver.eval, arg.eval);
                let test = string_test(function);
                Ok(Compiled {
                    predicate: None,
                    ty: Ty::Bool,
                    eval: eval(move |scope| match (s(scope)?, a(scope)?) {
                        (Value::String(s), Value::String(a)) => Ok(Value::Bool(test(&s, &a))),
                        (x, y) => Err(EvalError::no_overload("string function", &x, &y)),
                    }),
                })
            }
            ("matches", true, 1) => {
                let receiver = receiver.expect("method call");
                string_receiver(expr, function, &receiver.ty)?;
                let pattern = &args[0];
                let s = receiver.eval;
                match &pattern.kind {
                    ExprKind::Literal(Literal::String(pattern_text)) => {
                        let regex = bounded_regex(pattern_text).or_else(|message| err(&args[0], message))?;
                        Ok(Compiled {
                            predicate: None,
                            ty: Ty::Bool,
                            eval: eval(move |scope| match s(scope)? {
                                Value::String(s) => Ok(Value::Bool(regex.is_match(&s))),
                                other => Err(EvalError::new(format!("matches() on {}", other.type_name()))),
                            }),
                        })
                    }
                    _ => {
                        let arg = compiled_args.into_iter().next().expect("one argument");
                        let a = arg.eval;
                        Ok(Compiled {
                            predicate: None,
                            ty: Ty::Bool,
                            eval: eval(move |scope| match (s(scope)?, a(scope)?) {
                                (Value::String(s), Value::String(p)) => {
                                    // A pattern from the request: bounded in length,
                                    // and its compilation is charged.
                                    if p.len() > MAX_DYNAMIC_PATTERN_BYTES {
                                        return Err(EvalError::new(format!(
                                            "regular expression of {} bytes; the limit for one computed at run time is {MAX_DYNAMIC_PATTERN_BYTES}",
                                            p.len()
                                        )));
                                    }
                                    scope.charge(p.len() as u64)?;
                                    let regex = bounded_regex(&p).map_err(EvalError::new)?;
                                    Ok(Value::Bool(regex.is_match(&s)))
                                }
                                (x, y) => Err(EvalError::no_overload("matches", &x, &y)),
                            }),
                        })
                    }
                }
            }
            ("lowerAscii" | "upperAscii", true, 0) => {
                let receiver = receiver.expect("method call");
                string_receiver(expr, function, &receiver.ty)?;
                let s = receiver.eval;
                let upper = function == "upperAscii";
                Ok(Compiled {
                    predicate: None,
                    ty: Ty::String,
                    eval: eval(move |scope| match s(scope)? {
                        Value::String(s) => {
                            Ok(Value::string(if upper { s.to_ascii_uppercase() } else { s.to_ascii_lowercase() }))
                        }
                        other => Err(EvalError::new(format!(
                            "{} on {}",
                            if upper { "upperAscii" } else { "lowerAscii" },
                            other.type_name()
                        ))),
                    }),
                })
            }
            ("type", false, 1) => {
                let arg = compiled_args.into_iter().next().expect("one argument");
                let inner = arg.eval;
                Ok(Compiled {
                    predicate: None,
                    ty: Ty::Type,
                    eval: eval(move |scope| Ok(Value::Type(inner(scope)?.type_name()))),
                })
            }
            ("dyn", false, 1) => {
                // The value unchanged, its static type given up.
                let arg = compiled_args.into_iter().next().expect("one argument");
                Ok(Compiled { predicate: None, ty: Ty::Dyn, eval: arg.eval })
            }
            ("int" | "uint" | "double" | "string" | "bytes" | "bool" | "timestamp" | "duration", false, 1) => {
                let arg = compiled_args.into_iter().next().expect("one argument");
                conversion(expr, function, arg)
            }
            (
                "getFullYear" | "getMonth" | "getDate" | "getDayOfMonth" | "getDayOfWeek" | "getDayOfYear" | "getHours"
                | "getMinutes" | "getSeconds" | "getMilliseconds",
                true,
                0 | 1,
            ) => {
                let is_context_time = target.is_some_and(|t| self.is_context_time(t));
                self.time_accessor(expr, function, receiver.expect("method call"), is_context_time, args)
            }
            (_, true, _)
                if receiver.as_ref().is_some_and(|r| {
                    let types: Vec<Ty> = compiled_args.iter().map(|a| a.ty.clone()).collect();
                    super::net::method_signature(function, &r.ty, &types).is_some()
                }) =>
            {
                let receiver = receiver.expect("method call");
                let types: Vec<Ty> = compiled_args.iter().map(|a| a.ty.clone()).collect();
                let ty = super::net::method_signature(function, &receiver.ty, &types).expect("checked above");
                Ok(extension_method(ty, function, receiver.eval, compiled_args, super::net::method))
            }
            ("hasValue" | "value" | "orValue" | "or", true, _)
                if receiver.as_ref().is_some_and(|r| matches!(r.ty, Ty::Optional(_) | Ty::Dyn)) =>
            {
                optional_method(expr, function, receiver.expect("method call"), compiled_args)
            }
            (_, true, _)
                if receiver.as_ref().is_some_and(|r| {
                    let types: Vec<Ty> = compiled_args.iter().map(|a| a.ty.clone()).collect();
                    super::lists::method_signature(function, &r.ty, &types).is_some()
                }) =>
            {
                let receiver = receiver.expect("method call");
                let types: Vec<Ty> = compiled_args.iter().map(|a| a.ty.clone()).collect();
                let ty = super::lists::method_signature(function, &receiver.ty, &types).expect("checked above");
                Ok(extension_method(ty, function, receiver.eval, compiled_args, super::lists::method))
            }
            (_, true, _)
                if receiver.as_ref().is_some_and(|r| super::strings::signature(function, &r.ty, arity).is_some()) =>
            {
                let receiver = receiver.expect("method call");
                let (params, result) = super::strings::signature(function, &receiver.ty, arity).expect("checked above");
                if function == "format"
                    && let Some(Expr { kind: ExprKind::Literal(Literal::String(template)), .. }) = target
                {
                    super::strings::check_format(template).or_else(|message| err(expr, message))?;
                }
                for (arg, ty) in compiled_args.iter().zip(&params) {
                    if !assignable(&arg.ty, ty) {
                        return err(
                            expr,
                            format!("no matching overload for '{function}': {} where {ty} is expected", arg.ty),
                        );
                    }
                }
                Ok(extension_method(result, function, receiver.eval, compiled_args, super::strings::call))
            }
            _ => err(expr, format!("no matching overload for '{function}' with {arity} argument(s)")),
        }
    }

    /// Compiles `body` with the local `variable` of type `ty` in scope (and
    /// out of scope again, whether or not the body compiles).
    fn value_with_local(&mut self, variable: &str, ty: Ty, body: &Expr) -> Result<Compiled, CompileError> {
        self.locals.push((variable.to_owned(), ty));
        let body = self.value(body);
        self.locals.pop();
        body
    }

    /// `cel.bind(name, value, body)`: `body` with `name` bound to `value`,
    /// computed once.
    fn bind(&mut self, expr: &Expr, args: &[Expr]) -> Result<Compiled, CompileError> {
        let [variable, init, body] = args else {
            return err(expr, "cel.bind() takes a variable name, a value and an expression");
        };
        let variable = variable_name("cel.bind", variable)?;
        let init = self.value(init)?;
        let body = self.value_with_local(variable, init.ty.clone(), body)?;
        let (init, inner) = (init.eval, body.eval);
        Ok(Compiled {
            predicate: None,
            ty: body.ty,
            eval: eval(move |scope| {
                let mut locals = scope.locals.to_vec();
                locals.push(init(scope)?);
                inner(&scope.with_locals(&locals))
            }),
        })
    }

    fn namespaced(
        &mut self,
        expr: &Expr,
        namespace: &str,
        function: &str,
        args: &[Expr],
    ) -> Result<Compiled, CompileError> {
        let compiled = args.iter().map(|a| self.value(a)).collect::<Result<Vec<_>, _>>()?;
        let types: Vec<Ty> = compiled.iter().map(|c| c.ty.clone()).collect();
        let library = if super::lists::NAMESPACES.contains(&namespace) {
            Library::Lists
        } else if super::strings::NAMESPACES.contains(&namespace) {
            Library::Strings
        } else {
            Library::Math
        };
        let ty = match library {
            Library::Lists => super::lists::signature(namespace, function, &types),
            Library::Strings => super::strings::namespaced_signature(namespace, function, &types),
            Library::Math => super::math::signature(namespace, function, &types),
        };
        let Some(ty) = ty else {
            let types: Vec<String> = types.iter().map(Ty::to_string).collect();
            return err(expr, format!("no matching overload for {namespace}.{function}({})", types.join(", ")));
        };
        let (namespace, function): (Arc<str>, Arc<str>) = (namespace.into(), function.into());
        let args: Vec<Eval> = compiled.into_iter().map(|c| c.eval).collect();
        Ok(Compiled {
            predicate: None,
            ty,
            eval: eval(move |scope| {
                let values = args.iter().map(|a| a(scope)).collect::<Result<Vec<_>, _>>()?;
                scope.charge(cost::work(&function, &cost::sizes(&values)))?;
                let result = match library {
                    Library::Lists => super::lists::call(&namespace, &function, values),
                    Library::Strings => super::strings::namespaced_call(&namespace, &function, values),
                    Library::Math => super::math::call(&namespace, &function, values),
                }?;
                scope.charge(cost::units_of(&result))?;
                Ok(result)
            }),
        })
    }

    fn is_context_time(&self, expr: &Expr) -> bool {
        matches!(&expr.kind, ExprKind::Select { operand, field }
            if field == "time" && matches!(&operand.kind, ExprKind::Ident(name)
                if name == "context" && !self.locals.iter().any(|(local, _)| local == name)))
    }

    /// Method calls on input fields with constant arguments.
    fn fast_call(&self, target: Option<&Expr>, function: &str, args: &[Expr]) -> Option<Compiled> {
        let operand = match (target, args) {
            (Some(target), _) => self.leaf(target)?,
            (None, [only]) if function == "size" => self.leaf(only)?,
            _ => return None,
        };
        match (function, operand, args) {
            ("size", Leaf::Field(Field::AgentRoles), _) => Some(Compiled {
                predicate: None,
                ty: Ty::Int,
                eval: eval(|s| Ok(Value::Int(s.input.agent.roles.len() as i64))),
            }),
            ("size", Leaf::Field(Field::AgentLabels), _) => Some(Compiled {
                predicate: None,
                ty: Ty::Int,
                eval: eval(|s| Ok(Value::Int(s.input.agent.labels.len() as i64))),
            }),
            ("size", Leaf::Field(f), _) if f.is_text() => Some(Compiled {
                predicate: None,
                ty: Ty::Int,
                eval: eval(move |s| Ok(Value::Int(f.text(s.input).unwrap_or_default().chars().count() as i64))),
            }),
            ("contains" | "startsWith" | "endsWith", Leaf::Field(f), [arg]) if f.is_text() && target.is_some() => {
                let ExprKind::Literal(Literal::String(needle)) = &arg.kind else {
                    return None;
                };
                let needle: Arc<str> = needle.as_str().into();
                let test = string_test(function);
                Some(Compiled::from_predicate(pred(move |s| Ok(test(f.text(s.input).unwrap_or_default(), &needle)))))
            }
            _ => None,
        }
    }

    fn time_accessor(
        &mut self,
        expr: &Expr,
        function: &str,
        receiver: Compiled,
        receiver_is_context_time: bool,
        args: &[Expr],
    ) -> Result<Compiled, CompileError> {
        let zone = match args.first() {
            None => Zone::Utc,
            Some(Expr { kind: ExprKind::Literal(Literal::String(name)), .. }) => {
                Zone::parse(name).or_else(|message| err(&args[0], message))?
            }
            Some(other) => {
                return err(other, "the time zone must be a string literal, e.g. 'America/New_York'");
            }
        };
        let accessor = TimeField::parse(function);
        match receiver.ty {
            Ty::Timestamp | Ty::Dyn => {}
            Ty::Duration if args.is_empty() && accessor.on_duration() => {}
            ref other => {
                return err(expr, format!("no matching overload for '{function}' on {other}"));
            }
        }
        let cache = OffsetCache::default();
        if receiver.ty == Ty::Timestamp && receiver_is_context_time {
            return Ok(Compiled {
                predicate: None,
                ty: Ty::Int,
                eval: eval(move |scope| Ok(Value::Int(zone.field(scope.input.time, accessor, &cache)))),
            });
        }
        let inner = receiver.eval;
        Ok(Compiled {
            predicate: None,
            ty: Ty::Int,
            eval: eval(move |scope| match inner(scope)? {
                Value::Timestamp(t) => Ok(Value::Int(zone.field(t, accessor, &cache))),
                Value::Duration(d) if accessor.on_duration() => Ok(Value::Int(match accessor {
                    TimeField::Hours => d.num_hours(),
                    TimeField::Minutes => d.num_minutes(),
                    TimeField::Seconds => d.num_seconds(),
                    // The milliseconds part, as CEL defines it for durations.
                    _ => d.num_milliseconds() % 1000,
                })),
                other => Err(EvalError::new(format!("no such overload: {}.{accessor:?}", other.type_name()))),
            }),
        })
    }

    fn has(&mut self, expr: &Expr, args: &[Expr]) -> Result<Compiled, CompileError> {
        let [arg] = args else {
            return err(expr, "has() takes one argument: has(x.field)");
        };
        let ExprKind::Select { operand, field } = &arg.kind else {
            return err(arg, "has() needs a field selection, e.g. has(action.params.amount)");
        };
        match self.leaf(arg) {
            Some(Leaf::Param(key)) => {
                return Ok(Compiled {
                    predicate: None,
                    ty: Ty::Bool,
                    eval: eval(move |s| {
                        Ok(Value::Bool(s.input.action.params.as_ref().is_some_and(|p| p.fields.contains_key(&*key))))
                    }),
                });
            }
            Some(Leaf::Label(key)) => {
                return Ok(Compiled {
                    predicate: None,
                    ty: Ty::Bool,
                    eval: eval(move |s| Ok(Value::Bool(s.input.agent.labels.contains_key(&*key)))),
                });
            }
            _ => {}
        }
        let mut operand = self.compile(operand)?;
        operand.ty = operand.ty.erased();
        let field_name: Arc<str> = field.as_str().into();
        if let Ty::Message(message) = operand.ty {
            // A proto3 field is "present" when it is not its default value.
            let field_value = message_field(arg, message, field)?;
            let inner = field_value.eval;
            return Ok(Compiled {
                predicate: None,
                ty: Ty::Bool,
                eval: eval(move |scope| {
                    Ok(Value::Bool(match inner(scope)? {
                        Value::String(s) => !s.is_empty(),
                        Value::Double(d) => d != 0.0,
                        Value::List(l) => !l.is_empty(),
                        Value::Map(m) => !m.is_empty(),
                        _ => true,
                    }))
                }),
            });
        }
        if !matches!(operand.ty, Ty::Map(..) | Ty::Dyn | Ty::Optional(_)) {
            return err(arg, format!("has() cannot test a field of {}", operand.ty));
        }
        let inner = operand.eval;
        Ok(Compiled {
            predicate: None,
            ty: Ty::Bool,
            eval: eval(move |scope| {
                let mut value = inner(scope)?;
                // Through optionals: none has no fields.
                loop {
                    match value {
                        Value::Optional(Some(inner)) => value = (*inner).clone(),
                        Value::Optional(None) => return Ok(Value::Bool(false)),
                        Value::Map(map) => return Ok(Value::Bool(map.get_str(&field_name).is_some())),
                        other => return Err(EvalError::new(format!("has() on {}", other.type_name()))),
                    }
                }
            }),
        })
    }

    fn comprehension(
        &mut self,
        expr: &Expr,
        target: &Expr,
        macro_name: &str,
        args: &[Expr],
    ) -> Result<Compiled, CompileError> {
        let (variable, body, transform) = match (macro_name, args) {
            ("map", [v, t]) => (v, None, Some(t)),
            ("map", [v, p, t]) => (v, Some(p), Some(t)),
            (_, [v, p]) if macro_name != "map" => (v, Some(p), None),
            _ => {
                return err(expr, format!("{macro_name}() takes a variable and an expression"));
            }
        };
        let variable = variable_name(macro_name, variable)?;
        let range = self.value(target)?;
        let item_ty = match &range.ty {
            Ty::List(item) => (**item).clone(),
            Ty::Map(key, _) => (**key).clone(),
            Ty::Dyn => Ty::Dyn,
            other => {
                return err(target, format!("{macro_name}() needs a list or map, not {other}"));
            }
        };
        self.locals.push((variable.to_owned(), item_ty));
        let predicate = body.map(|p| self.value(p)).transpose();
        let mapped = transform.map(|t| self.value(t)).transpose();
        self.locals.pop();
        let (predicate, mapped) = (predicate?, mapped?);
        if let Some(p) = &predicate
            && !matches!(p.ty, Ty::Bool | Ty::Dyn)
        {
            return err(expr, format!("{macro_name}() needs a bool predicate, not {}", p.ty));
        }
        let result_ty = match macro_name {
            "map" => Ty::List(Box::new(mapped.as_ref().map(|m| m.ty.clone()).unwrap_or(Ty::Dyn))),
            "filter" => Ty::List(Box::new(match &range.ty {
                Ty::List(item) => (**item).clone(),
                Ty::Map(key, _) => (**key).clone(),
                _ => Ty::Dyn,
            })),
            _ => Ty::Bool,
        };
        let kind = match macro_name {
            "all" => Fold::All,
            "exists" => Fold::Exists,
            "exists_one" | "existsOne" => Fold::ExistsOne,
            "map" => Fold::Map,
            _ => Fold::Filter,
        };
        let range = range.eval;
        let predicate = predicate.map(|p| p.eval);
        let mapped = mapped.map(|m| m.eval);
        Ok(Compiled {
            predicate: None,
            ty: result_ty,
            eval: eval(move |scope| {
                let items: Vec<Value<'_>> = match range(scope)? {
                    Value::List(list) => list.iter().collect(),
                    Value::Map(map) => map.keys(),
                    other => {
                        return Err(EvalError::new(format!("cannot iterate over {}", other.type_name())));
                    }
                };
                scope.charge(items.len() as u64)?;
                let mut locals = scope.locals.to_vec();
                locals.push(Value::Null);
                let slot = locals.len() - 1;
                let mut count = 0usize;
                let mut first_error = None;
                let mut out = Vec::new();
                for item in items {
                    locals[slot] = item.clone();
                    let inner = scope.with_locals(&locals);
                    let keep = match &predicate {
                        Some(p) => match p(&inner) {
                            Ok(Value::Bool(b)) => b,
                            Ok(other) => {
                                return Err(EvalError::new(format!("predicate yielded {}", other.type_name())));
                            }
                            // all/exists absorb errors when another element decides.
                            Err(e) if matches!(kind, Fold::All | Fold::Exists) && !inner.exhausted() => {
                                first_error.get_or_insert(e);
                                continue;
                            }
                            Err(e) => return Err(e),
                        },
                        None => true,
                    };
                    match kind {
                        Fold::All if !keep => return Ok(Value::Bool(false)),
                        Fold::Exists if keep => return Ok(Value::Bool(true)),
                        Fold::ExistsOne if keep => count += 1,
                        Fold::Map if keep => out.push(mapped.as_ref().expect("map has a transform")(&inner)?),
                        Fold::Filter if keep => out.push(item),
                        _ => {}
                    }
                }
                if let Some(error) = first_error {
                    return Err(error);
                }
                Ok(match kind {
                    Fold::All => Value::Bool(true),
                    Fold::Exists => Value::Bool(false),
                    Fold::ExistsOne => Value::Bool(count == 1),
                    Fold::Map | Fold::Filter => {
                        scope.charge(out.len() as u64)?;
                        Value::List(List::Owned(Arc::new(out)))
                    }
                })
            }),
        })
    }
}

impl Compiler {
    /// A call of a declared function: the first overload whose parameters
    /// the arguments fit, binding type parameters to the most general type
    /// they meet (`dyn` absorbs the rest), types the call.
    fn declared_call(&mut self, expr: &Expr, declared: &FunctionDecl, args: &[Expr]) -> Result<Compiled, CompileError> {
        let compiled = args.iter().map(|a| self.value_precise(a)).collect::<Result<Vec<_>, _>>()?;
        for (params, result) in &declared.overloads {
            if params.len() != compiled.len() {
                continue;
            }
            let mut bindings: Vec<(String, Ty)> = Vec::new();
            if params.iter().zip(&compiled).all(|(param, arg)| bind_params(param, &arg.ty, &mut bindings)) {
                let name = declared.name.clone();
                return Ok(Compiled {
                    predicate: None,
                    ty: substitute(result, &bindings),
                    eval: eval(move |_| {
                        Err(EvalError::new(format!("function '{name}' is declared but not implemented")))
                    }),
                });
            }
        }
        let types: Vec<String> = compiled.iter().map(|c| c.ty.to_string()).collect();
        err(expr, format!("no matching overload for {}({})", declared.name, types.join(", ")))
    }

    /// `a.?field` and `a[?key]`.
    fn optional_access(&mut self, expr: &Expr, function: &str, args: &[Expr]) -> Result<Compiled, CompileError> {
        let [operand, key] = args else {
            return err(expr, "optional access takes an operand and a key");
        };
        let operand = self.value(operand)?;
        if function == OPTIONAL_SELECT {
            let ExprKind::Literal(Literal::String(field)) = &key.kind else {
                return err(key, "expected a field name after '.?'");
            };
            let ty = match &operand.ty {
                Ty::Map(key, value) if matches!(**key, Ty::String | Ty::Dyn) => Ty::Optional(value.clone()),
                Ty::Dyn | Ty::Optional(_) => Ty::Optional(Box::new(Ty::Dyn)),
                other => return err(expr, format!("type {other} has no field '{field}'")),
            };
            let (field, inner): (Arc<str>, Eval) = (field.as_str().into(), operand.eval);
            return Ok(Compiled {
                predicate: None,
                ty,
                eval: eval(move |scope| value::select(inner(scope)?, &field, true)),
            });
        }
        let key = self.value(key)?;
        let ty = index_type(expr, &operand.ty, &key.ty, true)?;
        let (container, key) = (operand.eval, key.eval);
        Ok(Compiled {
            predicate: None,
            ty,
            eval: eval(move |scope| value::index(container(scope)?, key(scope)?, true)),
        })
    }

    /// `optional.of(x)`, `optional.ofNonZeroValue(x)`, `optional.none()`.
    fn optional_constructor(&mut self, expr: &Expr, function: &str, args: &[Expr]) -> Result<Compiled, CompileError> {
        let args = args.iter().map(|a| self.value_precise(a)).collect::<Result<Vec<_>, _>>()?;
        match (function, args.as_slice()) {
            ("none", []) => Ok(Compiled {
                predicate: None,
                ty: Ty::Optional(Box::new(Ty::Free)),
                eval: eval(|_| Ok(Value::Optional(None))),
            }),
            ("of" | "ofNonZeroValue", [_]) => {
                let arg = args.into_iter().next().expect("one argument");
                let non_zero = function == "ofNonZeroValue";
                let inner = arg.eval;
                Ok(Compiled {
                    predicate: None,
                    ty: Ty::Optional(Box::new(arg.ty)),
                    eval: eval(move |scope| {
                        let value = inner(scope)?;
                        Ok(if non_zero && value.is_zero() {
                            Value::Optional(None)
                        } else {
                            Value::optional(Some(value))
                        })
                    }),
                })
            }
            _ => err(expr, format!("no matching overload for optional.{function} with {} argument(s)", args.len())),
        }
    }

    /// `opt.optMap(x, expr)` (none stays none, else `optional.of(expr)`)
    /// and `opt.optFlatMap(x, expr)` (where `expr` is itself optional).
    fn opt_map(&mut self, expr: &Expr, target: &Expr, function: &str, args: &[Expr]) -> Result<Compiled, CompileError> {
        let [variable, body] = args else {
            return err(expr, format!("{function}() takes a variable and an expression"));
        };
        let variable = variable_name(function, variable)?;
        let receiver = self.value(target)?;
        let item_ty = match &receiver.ty {
            Ty::Optional(inner) => (**inner).clone(),
            Ty::Dyn => Ty::Dyn,
            other => return err(target, format!("{function}() needs an optional value, not {other}")),
        };
        let body = self.value_with_local(variable, item_ty, body)?;
        let flat = function == "optFlatMap";
        let ty = if flat {
            match &body.ty {
                Ty::Optional(_) | Ty::Dyn => body.ty.clone(),
                other => return err(expr, format!("optFlatMap() needs an optional expression, not {other}")),
            }
        } else {
            Ty::Optional(Box::new(body.ty.clone()))
        };
        let (receiver, body) = (receiver.eval, body.eval);
        Ok(Compiled {
            predicate: None,
            ty,
            eval: eval(move |scope| {
                let inner = match receiver(scope)? {
                    Value::Optional(None) => return Ok(Value::Optional(None)),
                    Value::Optional(Some(inner)) => (*inner).clone(),
                    other => return Err(EvalError::new(format!("optMap on {}", other.type_name()))),
                };
                let mut locals = scope.locals.to_vec();
                locals.push(inner);
                let result = body(&scope.with_locals(&locals))?;
                if flat {
                    match result {
                        Value::Optional(_) => Ok(result),
                        other => Err(EvalError::new(format!("optFlatMap yielded {}", other.type_name()))),
                    }
                } else {
                    Ok(Value::optional(Some(result)))
                }
            }),
        })
    }

    /// `list.sortBy(x, key)`: the list in ascending order of `key`, stable.
    fn sort_by(&mut self, expr: &Expr, target: &Expr, args: &[Expr]) -> Result<Compiled, CompileError> {
        let [variable, key] = args else {
            return err(expr, "sortBy() takes a variable and a key expression");
        };
        let variable = variable_name("sortBy", variable)?;
        let range = self.value(target)?;
        let item_ty = match &range.ty {
            Ty::List(item) => (**item).clone(),
            Ty::Dyn => Ty::Dyn,
            other => return err(target, format!("sortBy() needs a list, not {other}")),
        };
        let key = self.value_with_local(variable, item_ty, key)?;
        if matches!(key.ty, Ty::List(_) | Ty::Map(..) | Ty::Null | Ty::Type | Ty::Optional(_)) {
            return err(expr, format!("sortBy() needs a key that can be ordered, not {}", key.ty));
        }
        let (range_ty, range, key) = (range.ty, range.eval, key.eval);
        Ok(Compiled {
            predicate: None,
            ty: range_ty,
            eval: eval(move |scope| {
                let items: Vec<Value<'_>> = match range(scope)? {
                    Value::List(list) => list.iter().collect(),
                    other => return Err(EvalError::new(format!("sortBy() on {}", other.type_name()))),
                };
                let n = items.len() as u64;
                scope.charge(n.saturating_add(cost::work("sort", &[n])).saturating_add(n))?;
                let mut locals = scope.locals.to_vec();
                locals.push(Value::Null);
                let slot = locals.len() - 1;
                let mut keys = Vec::with_capacity(items.len());
                for item in &items {
                    locals[slot] = item.clone();
                    keys.push(key(&scope.with_locals(&locals))?);
                }
                let order = super::lists::sort_order(&keys)?;
                Ok(Value::List(List::Owned(Arc::new(order.into_iter().map(|i| items[i].clone()).collect()))))
            }),
        })
    }

    /// `[a, ?b]`: optional elements are left out when none.
    fn optional_list(&mut self, items: &[Expr]) -> Result<Compiled, CompileError> {
        let mut parts: Vec<(bool, Eval)> = Vec::new();
        let mut types = Vec::new();
        for item in items {
            let (optional, inner) = optional_entry_of(item);
            let compiled = self.value(inner)?;
            let ty = if optional { optional_item_type(inner, &compiled.ty)? } else { compiled.ty.clone() };
            types.push(ty);
            parts.push((optional, compiled.eval));
        }
        Ok(Compiled {
            predicate: None,
            ty: Ty::List(Box::new(common_type(types.iter()))),
            eval: eval(move |scope| {
                scope.charge(parts.len() as u64)?;
                let mut values = Vec::with_capacity(parts.len());
                for (optional, part) in &parts {
                    match (optional, part(scope)?) {
                        (false, value) => values.push(value),
                        (true, Value::Optional(Some(value))) => values.push((*value).clone()),
                        (true, Value::Optional(None)) => {}
                        (true, other) => {
                            return Err(EvalError::new(format!("'?' element is {}, not optional", other.type_name())));
                        }
                    }
                }
                Ok(Value::List(List::Owned(Arc::new(values))))
            }),
        })
    }

    /// `{?k: v}`: the entry is left out when `v` is none.
    fn optional_map(&mut self, entries: &[(Expr, Expr)]) -> Result<Compiled, CompileError> {
        let mut parts: Vec<(bool, Eval, Eval)> = Vec::new();
        let (mut key_types, mut value_types) = (Vec::new(), Vec::new());
        for (key, value) in entries {
            let (optional, key) = optional_entry_of(key);
            let key = self.value(key)?;
            let compiled = self.value(value)?;
            let ty = if optional { optional_item_type(value, &compiled.ty)? } else { compiled.ty.clone() };
            key_types.push(key.ty.clone());
            value_types.push(ty);
            parts.push((optional, key.eval, compiled.eval));
        }
        Ok(Compiled {
            predicate: None,
            ty: Ty::Map(Box::new(common_type(key_types.iter())), Box::new(common_type(value_types.iter()))),
            eval: eval(move |scope| {
                scope.charge(parts.len() as u64)?;
                let mut out: Vec<(Value<'_>, Value<'_>)> = Vec::with_capacity(parts.len());
                for (optional, key, value) in &parts {
                    let key = key(scope)?;
                    let value = match (optional, value(scope)?) {
                        (false, value) => value,
                        (true, Value::Optional(Some(value))) => (*value).clone(),
                        (true, Value::Optional(None)) => continue,
                        (true, other) => {
                            return Err(EvalError::new(format!("'?' entry is {}, not optional", other.type_name())));
                        }
                    };
                    if out.iter().any(|(existing, _)| existing.equals(&key)) {
                        return Err(EvalError::new("duplicate map key"));
                    }
                    out.push((key, value));
                }
                Ok(Value::Map(Map::Owned(Arc::new(out))))
            }),
        })
    }
}

fn is_optional_entry(expr: &Expr) -> bool {
    matches!(&expr.kind, ExprKind::Call { target: None, function, .. } if function == OPTIONAL_ENTRY)
}

/// Whether an item is marked `?`, and the item itself.
fn optional_entry_of(expr: &Expr) -> (bool, &Expr) {
    match &expr.kind {
        ExprKind::Call { target: None, function, args } if function == OPTIONAL_ENTRY && args.len() == 1 => {
            (true, &args[0])
        }
        _ => (false, expr),
    }
}

/// The element type an optional entry contributes: `T` for `optional(T)`.
fn optional_item_type(expr: &Expr, ty: &Ty) -> Result<Ty, CompileError> {
    match ty {
        Ty::Optional(inner) => Ok((**inner).clone()),
        Ty::Dyn => Ok(Ty::Dyn),
        other => err(expr, format!("a '?' entry must be optional, not {other}")),
    }
}

/// The type of `container[key]` (optional with `[?key]`).
fn index_type(expr: &Expr, container: &Ty, key: &Ty, optional: bool) -> Result<Ty, CompileError> {
    let ty = match (container, key) {
        (Ty::List(item), Ty::Int | Ty::Uint | Ty::Dyn) => (**item).clone(),
        (Ty::Map(_, value), _) => (**value).clone(),
        (Ty::Dyn, _) => Ty::Dyn,
        (Ty::Optional(_), _) => return Ok(Ty::Optional(Box::new(Ty::Dyn))),
        (container, key) => return err(expr, format!("cannot index {container} with {key}")),
    };
    Ok(if optional { Ty::Optional(Box::new(ty)) } else { ty })
}

/// `hasValue()`, `value()`, `orValue(default)` and `or(other)` on optionals.
fn optional_method(
    expr: &Expr,
    function: &str,
    receiver: Compiled,
    args: Vec<Compiled>,
) -> Result<Compiled, CompileError> {
    let inner_ty = match &receiver.ty {
        Ty::Optional(inner) => (**inner).clone(),
        _ => Ty::Dyn,
    };
    let ty = match (function, args.as_slice()) {
        ("hasValue", []) => Ty::Bool,
        ("value", []) => inner_ty,
        ("orValue", [default]) => {
            if default.ty == inner_ty {
                inner_ty
            } else {
                Ty::Dyn
            }
        }
        ("or", [other]) if matches!(other.ty, Ty::Optional(_) | Ty::Dyn) => receiver.ty.clone(),
        _ => return err(expr, format!("no matching overload for '{function}' on {}", receiver.ty)),
    };
    let name: Arc<str> = function.into();
    let target = receiver.eval;
    let other = args.into_iter().next().map(|a| a.eval);
    Ok(Compiled {
        predicate: None,
        ty,
        eval: eval(move |scope| {
            let present = match target(scope)? {
                Value::Optional(present) => present,
                other => return Err(EvalError::new(format!("{name}() on {}, not an optional", other.type_name()))),
            };
            match (&*name, present) {
                ("hasValue", present) => Ok(Value::Bool(present.is_some())),
                ("value", Some(value)) => Ok((*value).clone()),
                ("value", None) => Err(EvalError::new("optional.none() dereference")),
                ("orValue" | "or", Some(value)) if &*name == "orValue" => Ok((*value).clone()),
                ("or", Some(value)) => Ok(Value::Optional(Some(value))),
                (_, None) => other.as_ref().expect("orValue and or take an argument")(scope),
                _ => Err(EvalError::new(format!("no such overload: {name}"))),
            }
        }),
    })
}

impl Compiler {
    /// The two-variable macros: `all`, `exists` and `existsOne` with an
    /// index (or key) and a value, and `transformList`, `transformMap` and
    /// `transformMapEntry`, each with an optional filter before the
    /// transform.
    fn comprehension2(
        &mut self,
        expr: &Expr,
        target: &Expr,
        macro_name: &str,
        args: &[Expr],
    ) -> Result<Compiled, CompileError> {
        let is_transform = macro_name.starts_with("transform");
        let (first, second, filter, body) = match args {
            [k, v, body] => (k, v, None, body),
            [k, v, filter, body] if is_transform => (k, v, Some(filter), body),
            _ => return err(expr, format!("{macro_name}() takes two variables and an expression")),
        };
        let (ExprKind::Ident(first), ExprKind::Ident(second)) = (&first.kind, &second.kind) else {
            return err(expr, format!("{macro_name}() needs two variable names as its first arguments"));
        };
        if first == second {
            return err(expr, format!("{macro_name}() needs two different variable names"));
        }
        let range = self.value(target)?;
        let (first_ty, second_ty) = match &range.ty {
            Ty::List(item) if macro_name != "transformMap" && macro_name != "transformMapEntry" => {
                (Ty::Int, (**item).clone())
            }
            Ty::Map(key, value) if macro_name != "transformList" => ((**key).clone(), (**value).clone()),
            Ty::Dyn => (Ty::Dyn, Ty::Dyn),
            other => return err(target, format!("{macro_name}() cannot range over {other}")),
        };
        self.locals.push((first.clone(), first_ty.clone()));
        self.locals.push((second.clone(), second_ty));
        let filter = filter.map(|f| self.value(f)).transpose();
        let body = self.value(body);
        self.locals.truncate(self.locals.len() - 2);
        let (filter, body) = (filter?, body?);
        for condition in filter.iter().chain((!is_transform).then_some(&body)) {
            if !matches!(condition.ty, Ty::Bool | Ty::Dyn) {
                return err(expr, format!("{macro_name}() needs a bool predicate, not {}", condition.ty));
            }
        }
        let result_ty = match macro_name {
            "transformList" => Ty::List(Box::new(body.ty.clone())),
            "transformMap" => Ty::Map(Box::new(first_ty), Box::new(body.ty.clone())),
            "transformMapEntry" => match &body.ty {
                Ty::Map(..) | Ty::Dyn => body.ty.clone(),
                other => return err(expr, format!("transformMapEntry() needs a map expression, not {other}")),
            },
            _ => Ty::Bool,
        };
        let kind = match macro_name {
            "all" => Fold2::All,
            "exists" => Fold2::Exists,
            "exists_one" | "existsOne" => Fold2::ExistsOne,
            "transformList" => Fold2::List,
            "transformMap" => Fold2::Map,
            _ => Fold2::MapEntry,
        };
        let range = range.eval;
        let filter = filter.map(|f| f.eval);
        let body = body.eval;
        Ok(Compiled {
            predicate: None,
            ty: result_ty,
            eval: eval(move |scope| {
                let pairs: Vec<(Value<'_>, Value<'_>)> = match range(scope)? {
                    Value::List(list) => list.iter().enumerate().map(|(i, v)| (Value::Int(i as i64), v)).collect(),
                    Value::Map(map) => map.keys().into_iter().filter_map(|k| map.get(&k).map(|v| (k, v))).collect(),
                    other => return Err(EvalError::new(format!("cannot iterate over {}", other.type_name()))),
                };
                scope.charge(pairs.len() as u64)?;
                let mut locals = scope.locals.to_vec();
                locals.extend([Value::Null, Value::Null]);
                let slot = locals.len() - 2;
                let mut count = 0usize;
                let mut first_error = None;
                let mut list_out = Vec::new();
                let mut map_out: Vec<(Value<'_>, Value<'_>)> = Vec::new();
                for (key, value) in pairs {
                    locals[slot] = key.clone();
                    locals[slot + 1] = value;
                    let inner = scope.with_locals(&locals);
                    if let Some(filter) = &filter {
                        match filter(&inner)? {
                            Value::Bool(true) => {}
                            Value::Bool(false) => continue,
                            other => return Err(EvalError::new(format!("filter yielded {}", other.type_name()))),
                        }
                    }
                    let result = body(&inner);
                    match kind {
                        Fold2::All | Fold2::Exists | Fold2::ExistsOne => {
                            let holds = match result {
                                Ok(Value::Bool(b)) => b,
                                Ok(other) => {
                                    return Err(EvalError::new(format!("predicate yielded {}", other.type_name())));
                                }
                                Err(e) if !matches!(kind, Fold2::ExistsOne) && !inner.exhausted() => {
                                    first_error.get_or_insert(e);
                                    continue;
                                }
                                Err(e) => return Err(e),
                            };
                            match kind {
                                Fold2::All if !holds => return Ok(Value::Bool(false)),
                                Fold2::Exists if holds => return Ok(Value::Bool(true)),
                                Fold2::ExistsOne if holds => count += 1,
                                _ => {}
                            }
                        }
                        Fold2::List => list_out.push(result?),
                        Fold2::Map => map_out.push((key, result?)),
                        Fold2::MapEntry => match result? {
                            Value::Map(entry) => {
                                for k in entry.keys() {
                                    if map_out.iter().any(|(existing, _)| existing.equals(&k)) {
                                        return Err(EvalError::new("transformMapEntry: duplicate map key"));
                                    }
                                    let v = entry.get(&k).unwrap_or(Value::Null);
                                    map_out.push((k, v));
                                }
                            }
                            other => {
                                return Err(EvalError::new(format!(
                                    "transformMapEntry() yielded {}, not a map",
                                    other.type_name()
                                )));
                            }
                        },
                    }
                }
                if let Some(error) = first_error {
                    return Err(error);
                }
                scope.charge((list_out.len() + map_out.len()) as u64)?;
                Ok(match kind {
                    Fold2::All => Value::Bool(true),
                    Fold2::Exists => Value::Bool(false),
                    Fold2::ExistsOne => Value::Bool(count == 1),
                    Fold2::List => Value::List(List::Owned(Arc::new(list_out))),
                    Fold2::Map | Fold2::MapEntry => Value::Map(Map::Owned(Arc::new(map_out))),
                })
            }),
        })
    }
}

/// Unifies a declared parameter type with an argument's type, binding type
/// parameters; false when they cannot match.
fn bind_params(param: &Ty, arg: &Ty, bindings: &mut Vec<(String, Ty)>) -> bool {
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
fn substitute(ty: &Ty, bindings: &[(String, Ty)]) -> Ty {
    match ty {
        Ty::Param(name) => bindings.iter().find(|(bound, _)| bound == name).map_or(Ty::Dyn, |(_, t)| t.clone()),
        Ty::List(item) => Ty::List(Box::new(substitute(item, bindings))),
        Ty::Map(k, v) => Ty::Map(Box::new(substitute(k, bindings)), Box::new(substitute(v, bindings))),
        Ty::Optional(inner) => Ty::Optional(Box::new(substitute(inner, bindings))),
        Ty::Abstract(name, ps) => Ty::Abstract(name.clone(), ps.iter().map(|p| substitute(p, bindings)).collect()),
        other => other.clone(),
    }
}

/// Which extension module implements a namespaced function.
#[derive(Clone, Copy)]
enum Library {
    Lists,
    Math,
    Strings,
}

/// Whether a value of type `from` may be passed where `to` is expected.
fn assignable(from: &Ty, to: &Ty) -> bool {
    match (from, to) {
        (Ty::Dyn, _) | (_, Ty::Dyn) => true,
        (Ty::List(a), Ty::List(b)) => assignable(a, b),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => assignable(k1, k2) && assignable(v1, v2),
        (a, b) => a == b,
    }
}

#[derive(Clone, Copy)]
enum Fold2 {
    All,
    Exists,
    ExistsOne,
    List,
    Map,
    MapEntry,
}

/// `a.b.c` as one dotted name, when the expression is only identifiers and
/// field selections.
fn qualified_name(expr: &Expr) -> Option<String> {
    match &expr.kind {
        ExprKind::Ident(name) => Some(name.clone()),
        ExprKind::Select { operand, field } => Some(format!("{}.{field}", qualified_name(operand)?)),
        _ => None,
    }
}

/// An expression that fails when evaluated (unchecked compilation only).
fn run_time_error(message: String) -> Compiled {
    Compiled { predicate: None, ty: Ty::Dyn, eval: eval(move |_| Err(EvalError::new(message.clone()))) }
}

#[derive(Clone, Copy)]
enum Fold {
    All,
    Exists,
    ExistsOne,
    Map,
    Filter,
}

/// `&&` and `||` over predicates, with CEL's error absorption: an error on
/// one side does not matter when the other side decides.
fn logic(and: bool, p: Predicate, q: Predicate) -> Predicate {
    pred(move |s| {
        let left = p(s);
        if left == Ok(!and) {
            return Ok(!and);
        }
        // An exhausted budget is never absorbed.
        if left.is_err() && s.exhausted() {
            return left;
        }
        match (left, q(s)) {
            (_, Ok(b)) if b != and => Ok(b),
            (Ok(_), Ok(b)) => Ok(b),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    })
}

/// The longest regular expression `matches` compiles at run time (from the
/// request rather than the policy).
const MAX_DYNAMIC_PATTERN_BYTES: usize = 1024;

/// The most memory a compiled regular expression may take. The regex crate
/// matches in time linear in the input; this bounds the other factor.
const MAX_REGEX_BYTES: usize = 1 << 20;

/// A regular expression within [`MAX_REGEX_BYTES`].
fn bounded_regex(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_BYTES)
        .dfa_size_limit(MAX_REGEX_BYTES)
        .build()
        .map_err(|e| format!("invalid regular expression: {e}"))
}

/// `contains`, `startsWith` or `endsWith` as a plain function.
fn string_test(function: &str) -> fn(&str, &str) -> bool {
    match function {
        "contains" => |s, a| s.contains(a),
        "startsWith" => |s, a| s.starts_with(a),
        _ => |s, a| s.ends_with(a),
    }
}

fn string_receiver(expr: &Expr, function: &str, ty: &Ty) -> Result<(), CompileError> {
    if matches!(ty, Ty::String | Ty::Dyn) {
        Ok(())
    } else {
        err(expr, format!("no matching overload for '{function}' on {ty}"))
    }
}

fn literal_value(literal: &Literal) -> Compiled {
    if let Literal::Bool(b) = *literal {
        return Compiled::from_predicate(pred(move |_| Ok(b)));
    }
    let (ty, value) = match literal {
        Literal::Null => (Ty::Null, Value::Null),
        Literal::Bool(b) => (Ty::Bool, Value::Bool(*b)),
        Literal::Int(i) => (Ty::Int, Value::Int(*i)),
        Literal::Uint(u) => (Ty::Uint, Value::Uint(*u)),
        Literal::Double(d) => (Ty::Double, Value::Double(*d)),
        Literal::String(s) => (Ty::String, Value::string(s.as_str())),
        Literal::Bytes(b) => (Ty::Bytes, Value::Bytes(b.as_slice().into())),
    };
    Compiled { predicate: None, ty, eval: constant(value) }
}

/// The joined type of a literal's elements; free when there are none.
fn common_type<'t>(types: impl Iterator<Item = &'t Ty>) -> Ty {
    types.fold(Ty::Free, |joined, ty| Ty::join(&joined, ty))
}

fn message_field(expr: &Expr, message: Message, field: &str) -> Result<Compiled, CompileError> {
    let (ty, eval): (Ty, Eval) = match (message, field) {
        (Message::Agent, "id") => (Ty::String, eval(|s| Ok(Value::String(Str::Borrowed(&s.input.agent.id))))),
        (Message::Agent, "name") => (Ty::String, eval(|s| Ok(Value::String(Str::Borrowed(&s.input.agent.name))))),
        (Message::Agent, "roles") => {
            (Ty::List(Box::new(Ty::String)), eval(|s| Ok(Value::List(List::Strings(&s.input.agent.roles)))))
        }
        (Message::Agent, "confidence") => (Ty::Double, eval(|s| Ok(Value::Double(s.input.agent.confidence)))),
        (Message::Agent, "labels") => (
            Ty::Map(Box::new(Ty::String), Box::new(Ty::String)),
            eval(|s| Ok(Value::Map(Map::Labels(&s.input.agent.labels)))),
        ),
        (Message::Action, "type") => (Ty::String, eval(|s| Ok(Value::String(Str::Borrowed(&s.input.action.r#type))))),
        (Message::Action, "resource") => {
            (Ty::String, eval(|s| Ok(Value::String(Str::Borrowed(&s.input.action.resource)))))
        }
        (Message::Action, "estimated_cost") => (Ty::Double, eval(|s| Ok(Value::Double(s.input.action.estimated_cost)))),
        (Message::Action, "params") => (
            Ty::Map(Box::new(Ty::String), Box::new(Ty::Dyn)),
            eval(|s| {
                Ok(match &s.input.action.params {
                    Some(params) => Value::Map(Map::Proto(&params.fields)),
                    None => Value::Map(Map::Owned(Arc::new(Vec::new()))),
                })
            }),
        ),
        (Message::Context, "time") => (Ty::Timestamp, eval(|s| Ok(Value::Timestamp(s.input.time)))),
        (Message::Context, "correlation_id") => {
            (Ty::String, eval(|s| Ok(Value::String(Str::Borrowed(s.input.correlation_id)))))
        }
        _ => {
            return err(
                expr,
                format!("{} has no field '{field}' (fields: {})", message.name(), message.fields().join(", ")),
            );
        }
    };
    Ok(Compiled { predicate: None, ty, eval })
}

fn binary_type(op: BinaryOp, l: &Ty, r: &Ty) -> Result<Ty, String> {
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

/// The run-time function of an extension library's method, as its
/// module implements it.
type Method = for<'a> fn(&str, Value<'a>, &[Value<'a>]) -> Result<Value<'a>, EvalError>;

/// `receiver.function(args)` run by an extension module's `run`, its
/// signature already checked.
fn extension_method(ty: Ty, function: &str, target: Eval, args: Vec<Compiled>, run: Method) -> Compiled {
    let name: Arc<str> = function.into();
    let args: Vec<Eval> = args.into_iter().map(|a| a.eval).collect();
    Compiled {
        predicate: None,
        ty,
        eval: eval(move |scope| {
            let receiver = target(scope)?;
            let values = args.iter().map(|a| a(scope)).collect::<Result<Vec<_>, _>>()?;
            scope.charge(cost::work(&name, &cost::sizes(std::iter::once(&receiver).chain(&values))))?;
            let result = run(&name, receiver, &values)?;
            scope.charge(cost::units_of(&result))?;
            Ok(result)
        }),
    }
}

/// The value of a type name: a constant.
fn type_value(name: &'static str) -> Compiled {
    Compiled { predicate: None, ty: Ty::Type, eval: eval(move |_| Ok(Value::Type(name))) }
}

fn conversion(expr: &Expr, function: &str, arg: Compiled) -> Result<Compiled, CompileError> {
    let allowed: &[Ty] = match function {
        "int" => &[Ty::Int, Ty::Uint, Ty::Double, Ty::String, Ty::Timestamp],
        "uint" => &[Ty::Int, Ty::Uint, Ty::Double, Ty::String],
        "double" => &[Ty::Int, Ty::Uint, Ty::Double, Ty::String],
        "string" => &[
            Ty::Int,
            Ty::Uint,
            Ty::Double,
            Ty::String,
            Ty::Bool,
            Ty::Bytes,
            Ty::Timestamp,
            Ty::Duration,
            Ty::Ip,
            Ty::Cidr,
        ],
        "bool" => &[Ty::Bool, Ty::String],
        "timestamp" => &[Ty::String, Ty::Timestamp, Ty::Int],
        "bytes" => &[Ty::String, Ty::Bytes],
        _ => &[Ty::String, Ty::Duration],
    };
    if !arg.ty.is_dyn() && !allowed.contains(&arg.ty) {
        return err(expr, format!("no matching overload for {function}({})", arg.ty));
    }
    let ty = match function {
        "int" => Ty::Int,
        "uint" => Ty::Uint,
        "double" => Ty::Double,
        "string" => Ty::String,
        "bool" => Ty::Bool,
        "timestamp" => Ty::Timestamp,
        "bytes" => Ty::Bytes,
        _ => Ty::Duration,
    };
    let inner = arg.eval;
    let target = ty.clone();
    Ok(Compiled { predicate: None, ty, eval: eval(move |scope| convert(&target, inner(scope)?)) })
}

fn convert<'a>(target: &Ty, value: Value<'a>) -> Result<Value<'a>, EvalError> {
    let fail = |value: &Value<'_>| EvalError::new(format!("cannot convert {} to {target}", value.type_name()));
    Ok(match (target, &value) {
        (Ty::Int, Value::Int(_)) | (Ty::Uint, Value::Uint(_)) | (Ty::Double, Value::Double(_)) => value,
        (Ty::String, Value::String(_)) | (Ty::Bool, Value::Bool(_)) => value,
        (Ty::Timestamp, Value::Timestamp(_)) | (Ty::Duration, Value::Duration(_)) => value,
        (Ty::Bytes, Value::Bytes(_)) => value,
        (Ty::Bytes, Value::String(s)) => Value::Bytes(s.as_bytes().to_vec().into()),
        (Ty::Int, Value::Uint(u)) => Value::Int(i64::try_from(*u).map_err(|_| EvalError::new("int overflow"))?),
        (Ty::Int, Value::Double(d)) => {
            // Both bounds exclusive, as the spec's conformance data has it:
            // -2^63 as a double is already outside the range it checks.
            if !d.is_finite() || *d >= 9.223_372_036_854_776e18 || *d <= -9.223_372_036_854_776e18 {
                return Err(EvalError::new("int out of range"));
            }
            Value::Int(d.trunc() as i64)
        }
        (Ty::Int, Value::String(s)) => {
            Value::Int(s.parse().map_err(|_| EvalError::new(format!("cannot parse {:?} as int", &**s)))?)
        }
        (Ty::Int, Value::Timestamp(t)) => Value::Int(t.timestamp()),
        (Ty::Uint, Value::Int(i)) => Value::Uint(u64::try_from(*i).map_err(|_| EvalError::new("uint overflow"))?),
        (Ty::Uint, Value::Double(d)) => {
            if !d.is_finite() || *d < 0.0 || *d >= 1.844_674_407_370_955_2e19 {
                return Err(EvalError::new("uint overflow"));
            }
            Value::Uint(d.trunc() as u64)
        }
        (Ty::Uint, Value::String(s)) => {
            Value::Uint(s.parse().map_err(|_| EvalError::new(format!("cannot parse {:?} as uint", &**s)))?)
        }
        (Ty::Double, Value::Int(i)) => Value::Double(*i as f64),
        (Ty::Double, Value::Uint(u)) => Value::Double(*u as f64),
        (Ty::Double, Value::String(s)) => {
            Value::Double(s.parse().map_err(|_| EvalError::new(format!("cannot parse {:?} as double", &**s)))?)
        }
        (Ty::String, Value::Int(i)) => Value::string(i.to_string()),
        (Ty::String, Value::Uint(u)) => Value::string(u.to_string()),
        (Ty::String, Value::Double(d)) => Value::string(d.to_string()),
        (Ty::String, Value::Bool(b)) => Value::string(b.to_string()),
        (Ty::String, Value::Bytes(b)) => {
            Value::string(std::str::from_utf8(b).map_err(|_| EvalError::new("bytes are not valid UTF-8"))?)
        }
        (Ty::String, Value::Timestamp(t)) => Value::string(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        (Ty::String, Value::Duration(d)) => Value::string(value::duration_string(*d)),
        (Ty::String, Value::Ip(ip)) => Value::string(ip.to_string()),
        (Ty::String, Value::Cidr(ip, length)) => Value::string(format!("{ip}/{length}")),
        (Ty::Bool, Value::String(s)) => Value::Bool(match &**s {
            "true" | "True" | "TRUE" | "t" | "1" => true,
            "false" | "False" | "FALSE" | "f" | "0" => false,
            other => return Err(EvalError::new(format!("cannot parse {other:?} as bool"))),
        }),
        (Ty::Timestamp, Value::String(s)) => Value::Timestamp(value::timestamp_in_range(
            DateTime::parse_from_rfc3339(s)
                .map_err(|e| EvalError::new(format!("cannot parse {:?} as timestamp: {e}", &**s)))?
                .with_timezone(&Utc),
        )?),
        (Ty::Timestamp, Value::Int(i)) => Value::Timestamp(value::timestamp_in_range(
            DateTime::from_timestamp(*i, 0).ok_or_else(|| EvalError::new("timestamp out of range"))?,
        )?),
        (Ty::Duration, Value::String(s)) => Value::Duration(value::parse_duration(s)?),
        _ => return Err(fail(&value)),
    })
}

// === Fast paths ===

/// Operands whose value can be read without going through `Value`.
#[derive(Debug, Clone)]
enum Leaf {
    Const(Value<'static>),
    Field(Field),
    /// `agent.labels.KEY`
    Label(Arc<str>),
    /// `action.params.KEY`
    Param(Arc<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
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
    fn of(message: &str, field: &str) -> Option<Field> {
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

    fn number(self, input: &Input<'_>) -> Option<f64> {
        match self {
            Field::AgentConfidence => Some(input.agent.confidence),
            Field::ActionCost => Some(input.action.estimated_cost),
            _ => None,
        }
    }

    fn is_number(self) -> bool {
        matches!(self, Field::AgentConfidence | Field::ActionCost)
    }

    fn text<'a>(self, input: &Input<'a>) -> Option<&'a str> {
        match self {
            Field::AgentId => Some(&input.agent.id),
            Field::AgentName => Some(&input.agent.name),
            Field::ActionType => Some(&input.action.r#type),
            Field::ActionResource => Some(&input.action.resource),
            Field::ContextCorrelationId => Some(input.correlation_id),
            _ => None,
        }
    }

    fn is_text(self) -> bool {
        matches!(
            self,
            Field::AgentId | Field::AgentName | Field::ActionType | Field::ActionResource | Field::ContextCorrelationId
        )
    }
}

fn literal_constant(literal: &Literal) -> Value<'static> {
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

fn flip(op: BinaryOp) -> BinaryOp {
    match op {
        BinaryOp::Lt => BinaryOp::Gt,
        BinaryOp::Le => BinaryOp::Ge,
        BinaryOp::Gt => BinaryOp::Lt,
        BinaryOp::Ge => BinaryOp::Le,
        other => other,
    }
}

/// Applies an ordering operator, or equality, to a comparison result.
fn ordered(op: BinaryOp, ordering: std::cmp::Ordering) -> bool {
    match op {
        BinaryOp::Eq => ordering.is_eq(),
        BinaryOp::Ne => !ordering.is_eq(),
        BinaryOp::Lt => ordering.is_lt(),
        BinaryOp::Le => ordering.is_le(),
        BinaryOp::Gt => ordering.is_gt(),
        _ => ordering.is_ge(),
    }
}

fn is_comparison(op: BinaryOp) -> bool {
    matches!(op, BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge)
}

fn constant_strings(value: &Value<'_>) -> Option<Arc<[Arc<str>]>> {
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
fn label<'a>(input: &Input<'a>, key: &str) -> Option<&'a str> {
    let labels = &input.agent.labels;
    if labels.len() <= 8 {
        labels.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v.as_str())
    } else {
        labels.get(key).map(String::as_str)
    }
}

fn missing_key(key: &str) -> EvalError {
    EvalError::new(format!("no such key: '{key}'"))
}

/// A closure for `left op right` that reads its operands directly, with the
/// same results and errors as the general path. `None` when no fast path fits.
fn specialize(op: BinaryOp, left: Leaf, right: Leaf) -> Option<Predicate> {
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

// === Time zones ===

#[derive(Debug, Clone, Copy)]
enum Zone {
    Utc,
    Fixed(FixedOffset),
    Named(Tz),
}

/// Remembers a named zone's offset for the last quarter hour asked about.
/// Every time zone changes its offset only at quarter-hour boundaries, so
/// one quarter hour has one offset. Packed in one atomic: no lock, no tear.
#[derive(Debug, Default)]
struct OffsetCache(std::sync::atomic::AtomicU64);

impl OffsetCache {
    const OFFSET_BITS: u32 = 20;
    const OFFSET_BIAS: i64 = 1 << 19;

    fn get_or_compute(&self, unix_seconds: i64, compute: impl FnOnce() -> i64) -> i64 {
        use std::sync::atomic::Ordering::Relaxed;
        let quarter = unix_seconds.div_euclid(900);
        // Quarter 0 is reserved for "empty"; far-away times skip the cache.
        let cacheable = quarter > 0 && quarter < (1 << 40);
        if cacheable {
            let packed = self.0.load(Relaxed);
            if packed >> Self::OFFSET_BITS == quarter as u64 {
                return (packed & ((1 << Self::OFFSET_BITS) - 1)) as i64 - Self::OFFSET_BIAS;
            }
        }
        let offset = compute();
        if cacheable && offset.abs() < Self::OFFSET_BIAS {
            self.0.store(((quarter as u64) << Self::OFFSET_BITS) | (offset + Self::OFFSET_BIAS) as u64, Relaxed);
        }
        offset
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeField {
    FullYear,
    Month,
    Date,
    DayOfMonth,
    DayOfWeek,
    DayOfYear,
    Hours,
    Minutes,
    Seconds,
    Milliseconds,
}

impl TimeField {
    fn parse(name: &str) -> TimeField {
        match name {
            "getFullYear" => TimeField::FullYear,
            "getMonth" => TimeField::Month,
            "getDate" => TimeField::Date,
            "getDayOfMonth" => TimeField::DayOfMonth,
            "getDayOfWeek" => TimeField::DayOfWeek,
            "getDayOfYear" => TimeField::DayOfYear,
            "getHours" => TimeField::Hours,
            "getMinutes" => TimeField::Minutes,
            "getSeconds" => TimeField::Seconds,
            _ => TimeField::Milliseconds,
        }
    }

    fn on_duration(self) -> bool {
        matches!(self, TimeField::Hours | TimeField::Minutes | TimeField::Seconds | TimeField::Milliseconds)
    }

    /// CEL's conventions: months and day-of-month/year from 0, date from 1,
    /// Sunday is day 0.
    fn of<T: Datelike + Timelike>(self, t: &T) -> i64 {
        match self {
            TimeField::FullYear => i64::from(t.year()),
            TimeField::Month => i64::from(t.month0()),
            TimeField::Date => i64::from(t.day()),
            TimeField::DayOfMonth => i64::from(t.day0()),
            TimeField::DayOfWeek => i64::from(t.weekday().num_days_from_sunday()),
            TimeField::DayOfYear => i64::from(t.ordinal0()),
            TimeField::Hours => i64::from(t.hour()),
            TimeField::Minutes => i64::from(t.minute()),
            TimeField::Seconds => i64::from(t.second()),
            TimeField::Milliseconds => i64::from(t.nanosecond() % 1_000_000_000 / 1_000_000),
        }
    }
}

impl Zone {
    fn parse(name: &str) -> Result<Zone, String> {
        if name == "UTC" || name == "Z" {
            return Ok(Zone::Utc);
        }
        // A fixed offset: `+HH:MM`, `-HH:MM`, or (as cel-go accepts) `HH:MM`.
        let signed = name.strip_prefix(['+', '-']).map(|body| (if name.starts_with('-') { -1 } else { 1 }, body));
        let unsigned = (name.contains(':') && name.starts_with(|c: char| c.is_ascii_digit())).then_some((1, name));
        if let Some((sign, body)) = signed.or(unsigned) {
            let (hours, minutes) = body.split_once(':').unwrap_or((body, "0"));
            let parsed = hours.parse::<i32>().ok().zip(minutes.parse::<i32>().ok());
            if let Some((h, m)) = parsed.filter(|(h, m)| *h <= 23 && *m <= 59)
                && let Some(offset) = FixedOffset::east_opt(sign * (h * 3600 + m * 60))
            {
                return Ok(Zone::Fixed(offset));
            }
            return Err(format!("invalid UTC offset {name:?}; use +HH:MM"));
        }
        name.parse::<Tz>().map(Zone::Named).map_err(|_| format!("unknown time zone {name:?}"))
    }

    /// The zone's offset from UTC at `t`, in seconds.
    fn offset_seconds(self, t: DateTime<Utc>, cache: &OffsetCache) -> i64 {
        match self {
            Zone::Utc => 0,
            Zone::Fixed(offset) => i64::from(offset.local_minus_utc()),
            Zone::Named(tz) => cache.get_or_compute(t.timestamp(), || {
                use chrono::{Offset, TimeZone};
                i64::from(tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc())
            }),
        }
    }

    fn field(self, t: DateTime<Utc>, field: TimeField, cache: &OffsetCache) -> i64 {
        let offset = self.offset_seconds(t, cache);
        let local_seconds = t.timestamp() + offset;
        let second_of_day = local_seconds.rem_euclid(86_400);
        match field {
            TimeField::Hours => second_of_day / 3600,
            TimeField::Minutes => second_of_day % 3600 / 60,
            TimeField::Seconds => second_of_day % 60,
            TimeField::Milliseconds => i64::from(t.timestamp_subsec_millis()),
            // 1970-01-01 was a Thursday (day 4, counting Sunday as 0).
            TimeField::DayOfWeek => (local_seconds.div_euclid(86_400) + 4).rem_euclid(7),
            _ => match DateTime::from_timestamp(local_seconds, t.timestamp_subsec_nanos()) {
                Some(local) => field.of(&local.naive_utc()),
                None => 0,
            },
        }
    }
}
