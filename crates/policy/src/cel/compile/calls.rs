//! Calls: functions and methods, the built-in ones, the extension
//! libraries' (checked against their signature tables), declared ones,
//! `cel.bind`, namespaced names, and timestamp accessors with time zones.

use super::*;

impl Compiler {
    pub(super) fn call(
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
            && (crate::cel::math::NAMESPACES.contains(&namespace.as_str())
                || crate::cel::lists::NAMESPACES.contains(&namespace.as_str())
                || crate::cel::strings::NAMESPACES.contains(&namespace.as_str()))
            && !self.locals.iter().any(|(local, _)| local == namespace)
        {
            return self.namespaced(expr, namespace, function, args);
        }
        if target.is_none()
            && let Some(declared) = self.functions.iter().find(|f| f.name == function).cloned()
        {
            return self.declared_call(expr, &declared, args);
        }
        if target.is_none() && crate::cel::net::FUNCTIONS.contains(&function) && self.resolve(function).is_none()
            || function == "isCanonical"
                && matches!(target.map(|t| &t.kind), Some(ExprKind::Ident(n)) if n == "ip" && self.resolve(n).is_none())
        {
            let compiled = args.iter().map(|a| self.value(a)).collect::<Result<Vec<_>, _>>()?;
            let types: Vec<Ty> = compiled.iter().map(|c| c.ty.clone()).collect();
            let Some(ty) = crate::cel::net::signature(function, &types) else {
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
                    crate::cel::net::call(&name, &values)
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
                    crate::cel::net::method_signature(function, &r.ty, &types).is_some()
                }) =>
            {
                let receiver = receiver.expect("method call");
                let types: Vec<Ty> = compiled_args.iter().map(|a| a.ty.clone()).collect();
                let ty = crate::cel::net::method_signature(function, &receiver.ty, &types).expect("checked above");
                Ok(extension_method(ty, function, receiver.eval, compiled_args, crate::cel::net::method))
            }
            ("hasValue" | "value" | "orValue" | "or", true, _)
                if receiver.as_ref().is_some_and(|r| matches!(r.ty, Ty::Optional(_) | Ty::Dyn)) =>
            {
                optional_method(expr, function, receiver.expect("method call"), compiled_args)
            }
            (_, true, _)
                if receiver.as_ref().is_some_and(|r| {
                    let types: Vec<Ty> = compiled_args.iter().map(|a| a.ty.clone()).collect();
                    crate::cel::lists::method_signature(function, &r.ty, &types).is_some()
                }) =>
            {
                let receiver = receiver.expect("method call");
                let types: Vec<Ty> = compiled_args.iter().map(|a| a.ty.clone()).collect();
                let ty = crate::cel::lists::method_signature(function, &receiver.ty, &types).expect("checked above");
                Ok(extension_method(ty, function, receiver.eval, compiled_args, crate::cel::lists::method))
            }
            (_, true, _)
                if receiver
                    .as_ref()
                    .is_some_and(|r| crate::cel::strings::signature(function, &r.ty, arity).is_some()) =>
            {
                let receiver = receiver.expect("method call");
                let (params, result) =
                    crate::cel::strings::signature(function, &receiver.ty, arity).expect("checked above");
                if function == "format"
                    && let Some(Expr { kind: ExprKind::Literal(Literal::String(template)), .. }) = target
                {
                    crate::cel::strings::check_format(template).or_else(|message| err(expr, message))?;
                }
                for (arg, ty) in compiled_args.iter().zip(&params) {
                    if !assignable(&arg.ty, ty) {
                        return err(
                            expr,
                            format!("no matching overload for '{function}': {} where {ty} is expected", arg.ty),
                        );
                    }
                }
                Ok(extension_method(result, function, receiver.eval, compiled_args, crate::cel::strings::call))
            }
            _ => err(expr, format!("no matching overload for '{function}' with {arity} argument(s)")),
        }
    }

    /// Compiles `body` with the local `variable` of type `ty` in scope (and
    /// out of scope again, whether or not the body compiles).
    pub(super) fn value_with_local(&mut self, variable: &str, ty: Ty, body: &Expr) -> Result<Compiled, CompileError> {
        self.locals.push((variable.to_owned(), ty));
        let body = self.value(body);
        self.locals.pop();
        body
    }

    /// `cel.bind(name, value, body)`: `body` with `name` bound to `value`,
    /// computed once.
    pub(super) fn bind(&mut self, expr: &Expr, args: &[Expr]) -> Result<Compiled, CompileError> {
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

    pub(super) fn namespaced(
        &mut self,
        expr: &Expr,
        namespace: &str,
        function: &str,
        args: &[Expr],
    ) -> Result<Compiled, CompileError> {
        let compiled = args.iter().map(|a| self.value(a)).collect::<Result<Vec<_>, _>>()?;
        let types: Vec<Ty> = compiled.iter().map(|c| c.ty.clone()).collect();
        let library = if crate::cel::lists::NAMESPACES.contains(&namespace) {
            Library::Lists
        } else if crate::cel::strings::NAMESPACES.contains(&namespace) {
            Library::Strings
        } else {
            Library::Math
        };
        let ty = match library {
            Library::Lists => crate::cel::lists::signature(namespace, function, &types),
            Library::Strings => crate::cel::strings::namespaced_signature(namespace, function, &types),
            Library::Math => crate::cel::math::signature(namespace, function, &types),
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
                    Library::Lists => crate::cel::lists::call(&namespace, &function, values),
                    Library::Strings => crate::cel::strings::namespaced_call(&namespace, &function, values),
                    Library::Math => crate::cel::math::call(&namespace, &function, values),
                }?;
                scope.charge(cost::units_of(&result))?;
                Ok(result)
            }),
        })
    }

    pub(super) fn is_context_time(&self, expr: &Expr) -> bool {
        matches!(&expr.kind, ExprKind::Select { operand, field }
            if field == "time" && matches!(&operand.kind, ExprKind::Ident(name)
                if name == "context" && !self.locals.iter().any(|(local, _)| local == name)))
    }

    /// Method calls on input fields with constant arguments.
    pub(super) fn fast_call(&self, target: Option<&Expr>, function: &str, args: &[Expr]) -> Option<Compiled> {
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

    pub(super) fn time_accessor(
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
}

/// Which extension module implements a namespaced function.
#[derive(Clone, Copy)]
pub(super) enum Library {
    Lists,
    Math,
    Strings,
}
