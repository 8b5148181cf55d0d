//! The Warden policy engine (placeholder while building).
pub mod cel;
