//! Optional values (`optional.of`, `m.?key`, `[?x]`, `{?k: v}`,
//! `orValue`, `optMap`, ...), declared functions, and `sortBy`.

use super::*;

impl Compiler {
    /// A call of a declared function: the first overload whose parameters
    /// the arguments fit, binding type parameters to the most general type
    /// they meet (`dyn` absorbs the rest), types the call.
    pub(super) fn declared_call(
        &mut self,
        expr: &Expr,
        declared: &FunctionDecl,
        args: &[Expr],
    ) -> Result<Compiled, CompileError> {
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
    pub(super) fn optional_access(
        &mut self,
        expr: &Expr,
        function: &str,
        args: &[Expr],
    ) -> Result<Compiled, CompileError> {
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
    pub(super) fn optional_constructor(
        &mut self,
        expr: &Expr,
        function: &str,
        args: &[Expr],
    ) -> Result<Compiled, CompileError> {
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
    pub(super) fn opt_map(
        &mut self,
        expr: &Expr,
        target: &Expr,
        function: &str,
        args: &[Expr],
    ) -> Result<Compiled, CompileError> {
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
    pub(super) fn sort_by(&mut self, expr: &Expr, target: &Expr, args: &[Expr]) -> Result<Compiled, CompileError> {
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
                let order = crate::cel::lists::sort_order(&keys)?;
                Ok(Value::List(List::Owned(Arc::new(order.into_iter().map(|i| items[i].clone()).collect()))))
            }),
        })
    }

    /// `[a, ?b]`: optional elements are left out when none.
    pub(super) fn optional_list(&mut self, items: &[Expr]) -> Result<Compiled, CompileError> {
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
    pub(super) fn optional_map(&mut self, entries: &[(Expr, Expr)]) -> Result<Compiled, CompileError> {
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

pub(super) fn is_optional_entry(expr: &Expr) -> bool {
    matches!(&expr.kind, ExprKind::Call { target: None, function, .. } if function == OPTIONAL_ENTRY)
}

/// Whether an item is marked `?`, and the item itself.
pub(super) fn optional_entry_of(expr: &Expr) -> (bool, &Expr) {
    match &expr.kind {
        ExprKind::Call { target: None, function, args } if function == OPTIONAL_ENTRY && args.len() == 1 => {
            (true, &args[0])
        }
        _ => (false, expr),
    }
}

/// The element type an optional entry contributes: `T` for `optional(T)`.
pub(super) fn optional_item_type(expr: &Expr, ty: &Ty) -> Result<Ty, CompileError> {
    match ty {
        Ty::Optional(inner) => Ok((**inner).clone()),
        Ty::Dyn => Ok(Ty::Dyn),
        other => err(expr, format!("a '?' entry must be optional, not {other}")),
    }
}

/// The type of `container[key]` (optional with `[?key]`).
pub(super) fn index_type(expr: &Expr, container: &Ty, key: &Ty, optional: bool) -> Result<Ty, CompileError> {
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
pub(super) fn optional_method(
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
