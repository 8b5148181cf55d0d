//! CEL's network extension, as Kubernetes ships it: the `net.IP` and
//! `net.CIDR` types, `ip()`, `cidr()`, `isIP()`, `ip.isCanonical()` and
//! their methods. Addresses with a zone (`fe80::1%en0`) and IPv4-mapped IPv6
//! written with a dotted quad (`::ffff:1.2.3.4`) are refused, as Kubernetes
//! refuses them; an IPv4-mapped address equals its IPv4 form.

use std::net::IpAddr;

use super::types::Ty;
use super::value::{EvalError, Value};

pub const IP_TYPE: &str = "net.IP";
pub const CIDR_TYPE: &str = "net.CIDR";

/// Functions called without a receiver: `ip(s)`, `cidr(s)`, `isIP(s)`.
pub const FUNCTIONS: &[&str] = &["ip", "cidr", "isIP"];

pub fn parse_ip(text: &str) -> Result<IpAddr, EvalError> {
    if text.contains('%') {
        return Err(EvalError::new(format!("IP address with zone value is not allowed: {text:?}")));
    }
    if text.contains(':') && text.contains('.') {
        return Err(EvalError::new("IPv4-mapped IPv6 address is not allowed"));
    }
    text.parse::<IpAddr>()
        .map_err(|_| EvalError::new(format!("IP Address {text:?} parse error during conversion from string")))
}

pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), EvalError> {
    let bad = || EvalError::new(format!("network address parse error during conversion from string: {text:?}"));
    let (address, length) = text.split_once('/').ok_or_else(bad)?;
    let address = parse_ip(address)?;
    let length: u8 = length.parse().map_err(|_| bad())?;
    if length > max_length(address) {
        return Err(bad());
    }
    Ok((address, length))
}

fn max_length(address: IpAddr) -> u8 {
    if address.is_ipv4() { 32 } else { 128 }
}

/// The address with IPv4-mapped IPv6 unmapped, for comparisons.
pub fn canonical(address: IpAddr) -> IpAddr {
    address.to_canonical()
}

fn masked(address: IpAddr, length: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = if length == 0 { 0 } else { u32::MAX << (32 - u32::from(length)) };
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = if length == 0 { 0 } else { u128::MAX << (128 - u32::from(length)) };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

fn contains(network: IpAddr, length: u8, address: IpAddr) -> bool {
    network.is_ipv4() == address.is_ipv4() && masked(network, length) == masked(address, length)
}

/// Result types of the free functions and of `ip.isCanonical`.
pub fn signature(function: &str, args: &[Ty]) -> Option<Ty> {
    match (function, args) {
        ("ip", [Ty::String | Ty::Dyn]) => Some(Ty::Ip),
        ("cidr", [Ty::String | Ty::Dyn]) => Some(Ty::Cidr),
        ("isIP" | "isCanonical", [Ty::String | Ty::Dyn]) => Some(Ty::Bool),
        _ => None,
    }
}

pub fn call<'a>(function: &str, args: &[Value<'a>]) -> Result<Value<'a>, EvalError> {
    let text = match args {
        [Value::String(s)] => &**s,
        [other] => return Err(EvalError::new(format!("no such overload: {function}({})", other.type_name()))),
        _ => return Err(EvalError::new(format!("{function}() takes one argument"))),
    };
    Ok(match function {
        "ip" => Value::Ip(parse_ip(text)?),
        "cidr" => {
            let (address, length) = parse_cidr(text)?;
            Value::Cidr(address, length)
        }
        "isIP" => Value::Bool(parse_ip(text).is_ok()),
        _ => Value::Bool(parse_ip(text)?.to_string() == text),
    })
}

/// Result types of methods on `net.IP` and `net.CIDR`.
pub fn method_signature(function: &str, receiver: &Ty, args: &[Ty]) -> Option<Ty> {
    let is = |ty: &Ty, want: &Ty| ty == want || ty.is_dyn();
    match (function, args) {
        ("family", []) if is(receiver, &Ty::Ip) => Some(Ty::Int),
        ("isUnspecified" | "isLoopback" | "isGlobalUnicast" | "isLinkLocalMulticast" | "isLinkLocalUnicast", [])
            if is(receiver, &Ty::Ip) =>
        {
            Some(Ty::Bool)
        }
        ("containsIP", [arg]) if is(receiver, &Ty::Cidr) && (is(arg, &Ty::Ip) || *arg == Ty::String) => Some(Ty::Bool),
        ("containsCIDR", [arg]) if is(receiver, &Ty::Cidr) && (is(arg, &Ty::Cidr) || *arg == Ty::String) => {
            Some(Ty::Bool)
        }
        ("ip", []) if is(receiver, &Ty::Cidr) => Some(Ty::Ip),
        ("masked", []) if is(receiver, &Ty::Cidr) => Some(Ty::Cidr),
        ("prefixLength", []) if is(receiver, &Ty::Cidr) => Some(Ty::Int),
        _ => None,
    }
}

pub fn method<'a>(function: &str, receiver: Value<'a>, args: &[Value<'a>]) -> Result<Value<'a>, EvalError> {
    match (&receiver, function, args) {
        (Value::Ip(ip), "family", []) => Ok(Value::Int(if ip.is_ipv4() { 4 } else { 6 })),
        (Value::Ip(ip), "isUnspecified", []) => Ok(Value::Bool(ip.is_unspecified())),
        (Value::Ip(ip), "isLoopback", []) => Ok(Value::Bool(ip.is_loopback())),
        (Value::Ip(ip), "isLinkLocalMulticast", []) => Ok(Value::Bool(match ip {
            IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
            IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
        })),
        (Value::Ip(ip), "isLinkLocalUnicast", []) => Ok(Value::Bool(link_local_unicast(*ip))),
        (Value::Ip(ip), "isGlobalUnicast", []) => Ok(Value::Bool(
            !ip.is_unspecified()
                && !ip.is_loopback()
                && !ip.is_multicast()
                && !link_local_unicast(*ip)
                && *ip != IpAddr::V4(std::net::Ipv4Addr::BROADCAST),
        )),
        (Value::Cidr(network, length), "containsIP", [arg]) => {
            let address = match arg {
                Value::Ip(ip) => *ip,
                Value::String(s) => parse_ip(s)?,
                other => return Err(EvalError::new(format!("no such overload: containsIP({})", other.type_name()))),
            };
            Ok(Value::Bool(contains(*network, *length, address)))
        }
        (Value::Cidr(network, length), "containsCIDR", [arg]) => {
            let (other, other_length) = match arg {
                Value::Cidr(ip, l) => (*ip, *l),
                Value::String(s) => parse_cidr(s)?,
                other => {
                    return Err(EvalError::new(format!("no such overload: containsCIDR({})", other.type_name())));
                }
            };
            Ok(Value::Bool(other_length >= *length && contains(*network, *length, other)))
        }
        (Value::Cidr(network, _), "ip", []) => Ok(Value::Ip(*network)),
        (Value::Cidr(network, length), "masked", []) => Ok(Value::Cidr(masked(*network, *length), *length)),
        (Value::Cidr(_, length), "prefixLength", []) => Ok(Value::Int(i64::from(*length))),
        _ => Err(EvalError::new(format!("no such overload: {}.{function}", receiver.type_name()))),
    }
}

fn link_local_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}
