//! Conversions (`int`, `double`, `string`, `timestamp`, ...), type
//! values, and extension methods run by their library's function.

use super::*;

/// The run-time function of an extension library's method, as its
/// module implements it.
pub(super) type Method = for<'a> fn(&str, Value<'a>, &[Value<'a>]) -> Result<Value<'a>, EvalError>;

/// `receiver.function(args)` run by an extension module's `run`, its
/// signature already checked.
pub(super) fn extension_method(ty: Ty, function: &str, target: Eval, args: Vec<Compiled>, run: Method) -> Compiled {
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
pub(super) fn type_value(name: &'static str) -> Compiled {
    Compiled { predicate: None, ty: Ty::Type, eval: eval(move |_| Ok(Value::Type(name))) }
}

pub(super) fn conversion(expr: &Expr, function: &str, arg: Compiled) -> Result<Compiled, CompileError> {
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

pub(super) fn convert<'a>(target: &Ty, value: Value<'a>) -> Result<Value<'a>, EvalError> {
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
