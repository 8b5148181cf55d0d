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

use super::types::{Message, Ty, assignable, binary_type, bind_params, common_type, substitute};
use crate::cel::cost::{self, Budget};
use crate::cel::parse::{BinaryOp, Expr, ExprKind, Literal, OPTIONAL_ENTRY, OPTIONAL_INDEX, OPTIONAL_SELECT, UnaryOp};
use crate::cel::value::{self, EvalError, List, Map, Str, Value};

mod calls;
mod conversions;
mod fast;
mod macros;
mod optionals;
mod time;

use conversions::*;
use fast::*;
use optionals::*;
use time::*;

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
    let expr = crate::cel::parse::parse(source).map_err(|e| CompileError { offset: e.offset, message: e.message })?;
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
            && (path == crate::cel::net::IP_TYPE || path == crate::cel::net::CIDR_TYPE)
            && self.resolve("net").is_none()
            && self.resolve(&path).is_none()
        {
            let name =
                if path == crate::cel::net::IP_TYPE { crate::cel::net::IP_TYPE } else { crate::cel::net::CIDR_TYPE };
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
