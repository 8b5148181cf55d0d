//! Warden's implementation of the Common Expression Language for rule
//! conditions: [`parse`] turns text into a tree, [`compile`] checks it
//! against the variables a condition can see (`agent`, `action`, `context`)
//! and compiles it into closures, [`value`] holds run-time values, and
//! `strings`, `math`, `lists` and `net` are CEL's strings, math, encoders,
//! lists, sets and network extensions.
//!
//! Policy semantics are Warden's product, so this is our own code: it gives
//! load-time errors with columns, bounded nesting, and sub-microsecond
//! evaluation with no allocation for ordinary conditions.

pub mod compile;
pub mod cost;
mod lists;
mod math;
mod net;
pub mod parse;
mod strings;
mod types;
pub mod value;

pub use compile::{CompileError, Env, Expression, FunctionDecl, Input, NumberProgram, Program};
pub use types::Ty;
pub use value::EvalError;
pub use value::Value;

#[cfg(test)]
mod tests;
