//! The macros: `has`, and the comprehensions (`all`, `exists`,
//! `exists_one`, `map`, `filter`, and the two-variable forms).

use super::*;

impl Compiler {
    pub(super) fn has(&mut self, expr: &Expr, args: &[Expr]) -> Result<Compiled, CompileError> {
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

    pub(super) fn comprehension(
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
    /// The two-variable macros: `all`, `exists` and `existsOne` with an
    /// index (or key) and a value, and `transformList`, `transformMap` and
    /// `transformMapEntry`, each with an optional filter before the
    /// transform.
    pub(super) fn comprehension2(
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

#[derive(Clone, Copy)]
pub(super) enum Fold2 {
    All,
    Exists,
    ExistsOne,
    List,
    Map,
    MapEntry,
}
