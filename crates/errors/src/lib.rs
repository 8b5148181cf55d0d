//! Error classification shared by every Warden crate and service.
//!
//! Every error Warden produces answers three questions: what kind of failure
//! it is ([`Category`]), how bad it is for the system ([`Severity`]), and
//! whether trying again can help ([`Classify::retryable`]). Services define
//! their own `thiserror` enums and implement [`Classify`]; the conversion to
//! a `tonic::Status` happens once, at the gRPC handler edge, through
//! [`to_status`], using the google.rpc rich error model (`ErrorInfo`,
//! `RetryInfo`, `BadRequest`). Clients go the other way with
//! [`WardenError::from_status`], so a retry layer asks the error instead of
//! guessing from strings.
//!
//! This crate must not depend on any other Warden crate.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

pub use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The error domain put in every `google.rpc.ErrorInfo`.
pub const DOMAIN: &str = "warden";

/// What kind of failure an error is. Drives retries, breakers and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// A passing condition (overload, a timeout, a lost connection): retry.
    Transient,
    /// The request cannot succeed as sent (bad input, not found): never retry.
    Permanent,
    /// A governance rule refused the request: never retry, never count as a
    /// failure of the callee.
    PolicyViolation,
    /// A dependency outside Warden failed (database, Redis, an LLM API).
    ExternalService,
    /// A bug or broken invariant inside Warden.
    Internal,
}

impl Category {
    /// The stable lowercase name used in metadata, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Transient => "transient",
            Category::Permanent => "permanent",
            Category::PolicyViolation => "policy_violation",
            Category::ExternalService => "external_service",
            Category::Internal => "internal",
        }
    }

    /// Parses [`Category::as_str`] back.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "transient" => Category::Transient,
            "permanent" => Category::Permanent,
            "policy_violation" => Category::PolicyViolation,
            "external_service" => Category::ExternalService,
            "internal" => Category::Internal,
            _ => return None,
        })
    }

    /// Whether an error of this category may succeed when tried again.
    /// External-service failures are retryable: the dependency may recover.
    pub fn retryable(self) -> bool {
        matches!(self, Category::Transient | Category::ExternalService)
    }

    /// The gRPC code used when an error does not choose one itself.
    pub fn default_code(self) -> Code {
        match self {
            Category::Transient => Code::Unavailable,
            Category::Permanent => Code::FailedPrecondition,
            Category::PolicyViolation => Code::PermissionDenied,
            Category::ExternalService => Code::Unavailable,
            Category::Internal => Code::Internal,
        }
    }

    /// The category a bare gRPC code implies, for statuses without details.
    pub fn from_code(code: Code) -> Self {
        match code {
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted => Category::Transient,
            Code::PermissionDenied => Category::PolicyViolation,
            Code::Internal | Code::DataLoss | Code::Unknown => Category::Internal,
            _ => Category::Permanent,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much an error hurts the system as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The request failed; the system is fine.
    Recoverable,
    /// The system works with reduced function (a fallback is in use).
    Degraded,
    /// The system cannot do its job; page someone.
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Recoverable => "recoverable",
            Severity::Degraded => "degraded",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "recoverable" => Severity::Recoverable,
            "degraded" => Severity::Degraded,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// One bad field of a request, reported as a `google.rpc.BadRequest` violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `agent.id` or `action.params`.
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation { field: field.into(), description: description.into() }
    }
}

/// The classification every Warden error exposes.
pub trait Classify: fmt::Display {
    fn category(&self) -> Category;

    fn severity(&self) -> Severity {
        match self.category() {
            Category::Internal => Severity::Critical,
            Category::ExternalService => Severity::Degraded,
            _ => Severity::Recoverable,
        }
    }

    /// A stable, SCREAMING_SNAKE_CASE reason code for `ErrorInfo.reason`.
    fn reason(&self) -> &str;

    /// The gRPC code; defaults to the category's.
    fn code(&self) -> Code {
        self.category().default_code()
    }

    /// How long a caller should wait before retrying, when known.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// The fields at fault, for invalid input.
    fn field_violations(&self) -> &[FieldViolation] {
        &[]
    }

    fn retryable(&self) -> bool {
        self.category().retryable()
    }
}

/// Converts a classified error into a rich `tonic::Status`.
///
/// Internal errors are logged by the caller; their message is passed through
/// because Warden's messages never carry secrets.
pub fn to_status<E: Classify + ?Sized>(error: &E) -> Status {
    let mut metadata = HashMap::new();
    metadata.insert("category".to_owned(), error.category().as_str().to_owned());
    metadata.insert("severity".to_owned(), error.severity().as_str().to_owned());
    let mut details = ErrorDetails::with_error_info(error.reason(), DOMAIN, metadata);
    if let Some(delay) = error.retry_after() {
        details.set_retry_info(Some(delay));
    } else if error.retryable() {
        // Retryable without a hint: say so with a short default delay so
        // clients that only honour RetryInfo still retry.
        details.set_retry_info(Some(Duration::from_millis(100)));
    }
    let violations = error.field_violations();
    if !violations.is_empty() {
        for violation in violations {
            details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
        }
    }
    Status::with_error_details(error.code(), error.to_string(), details)
}

/// The most field violations one error lists.
pub const MAX_VIOLATIONS: usize = 16;
/// The longest field name or description a violation keeps.
const MAX_TEXT: usize = 256;

/// Cuts `text` to at most `max` bytes, on a character boundary, marking the cut.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
}

/// A classified error in plain data form: what a client reads out of a
/// `tonic::Status`, and a convenient concrete error for crates that need one.
#[derive(Debug, Clone, PartialEq)]
pub struct WardenError {
    pub category: Category,
    pub severity: Severity,
    pub code: Code,
    pub reason: String,
    pub message: String,
    pub retry_after: Option<Duration>,
    pub violations: Vec<FieldViolation>,
}

impl WardenError {
    pub fn new(category: Category, reason: impl Into<String>, message: impl Into<String>) -> Self {
        let severity = match category {
            Category::Internal => Severity::Critical,
            Category::ExternalService => Severity::Degraded,
            _ => Severity::Recoverable,
        };
        WardenError {
            category,
            severity,
            code: category.default_code(),
            reason: reason.into(),
            message: message.into(),
            retry_after: None,
            violations: Vec::new(),
        }
    }

    /// An `INVALID_ARGUMENT` error naming the fields at fault: the first
    /// [`MAX_VIOLATIONS`], and how many more there were. (A status travels
    /// in HTTP/2 headers, which clients cap at 16 KiB: a request with a
    /// hundred bad fields must not turn its refusal into a protocol error.)
    pub fn invalid_argument(mut violations: Vec<FieldViolation>) -> Self {
        if violations.len() > MAX_VIOLATIONS {
            let more = violations.len() - (MAX_VIOLATIONS - 1);
            violations.truncate(MAX_VIOLATIONS - 1);
            violations.push(FieldViolation::new("(more)", format!("{more} more fields are invalid")));
        }
        for violation in &mut violations {
            truncate(&mut violation.field, MAX_TEXT);
            truncate(&mut violation.description, MAX_TEXT);
        }
        let message =
            violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
        WardenError {
            code: Code::InvalidArgument,
            violations,
            ..WardenError::new(Category::Permanent, "INVALID_ARGUMENT", message)
        }
    }

    pub fn with_code(mut self, code: Code) -> Self {
        self.code = code;
        self
    }

    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Classifies a status received from a Warden service or any gRPC server.
    ///
    /// Rich details win when present; otherwise the code decides.
    pub fn from_status(status: &Status) -> Self {
        let details = status.get_error_details();
        let info = details.error_info();
        let category = info
            .and_then(|info| info.metadata.get("category"))
            .and_then(|name| Category::parse(name))
            .unwrap_or_else(|| Category::from_code(status.code()));
        let mut error = WardenError::new(
            category,
            info.map(|info| info.reason.clone()).unwrap_or_else(|| format!("{:?}", status.code()).to_uppercase()),
            status.message(),
        );
        error.code = status.code();
        if let Some(severity) = info.and_then(|info| info.metadata.get("severity")).and_then(|s| Severity::parse(s)) {
            error.severity = severity;
        }
        error.retry_after = details.retry_info().and_then(|retry| retry.retry_delay);
        if let Some(bad_request) = details.bad_request() {
            error.violations = bad_request
                .field_violations
                .iter()
                .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
                .collect();
        }
        error
    }

    pub fn to_status(&self) -> Status {
        to_status(self)
    }
}

impl fmt::Display for WardenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WardenError {}

impl Classify for WardenError {
    fn category(&self) -> Category {
        self.category
    }
    fn severity(&self) -> Severity {
        self.severity
    }
    fn reason(&self) -> &str {
        &self.reason
    }
    fn code(&self) -> Code {
        self.code
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
    fn field_violations(&self) -> &[FieldViolation] {
        &self.violations
    }
    fn retryable(&self) -> bool {
        // Invalid input is never worth retrying, whatever its category says.
        self.code != Code::InvalidArgument && self.category.retryable()
    }
}

impl From<WardenError> for Status {
    fn from(error: WardenError) -> Status {
        to_status(&error)
    }
}

/// Collects field violations while validating a request, then turns them
/// into one `INVALID_ARGUMENT` error.
#[derive(Debug, Default)]
pub struct Validator {
    violations: Vec<FieldViolation>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn violation(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations.push(FieldViolation::new(field, description));
    }

    /// Records a violation when `ok` is false.
    pub fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.violation(field, description);
        }
    }

    /// Requires a non-empty string of at most `max` bytes.
    pub fn required_str(&mut self, field: &str, value: &str, max: usize) {
        if value.is_empty() {
            self.violation(field, "must not be empty");
        } else {
            self.max_len(field, value, max);
        }
    }

    /// Requires a string of at most `max` bytes, without NUL characters
    /// (PostgreSQL's text cannot hold them; stored text would fail the
    /// whole transaction, and a group commit with it).
    pub fn max_len(&mut self, field: &str, value: &str, max: usize) {
        if value.len() > max {
            self.violation(field, format!("must be at most {max} bytes, got {}", value.len()));
        } else if value.contains('\0') {
            self.violation(field, "must not contain NUL characters");
        }
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn finish(self) -> Result<(), WardenError> {
        if self.violations.is_empty() { Ok(()) } else { Err(WardenError::invalid_argument(self.violations)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hundred_bad_fields_make_a_refusal_that_fits_in_headers() {
        let mut validator = Validator::new();
        for i in 0..100 {
            validator.violation(format!("agent.roles[{i}]"), "x".repeat(1000));
        }
        let status = validator.finish().unwrap_err().to_status();
        let back = WardenError::from_status(&status);
        assert_eq!(back.violations.len(), MAX_VIOLATIONS);
        assert_eq!(back.violations[MAX_VIOLATIONS - 1].description, "85 more fields are invalid");
        assert!(back.violations[0].description.len() <= 256);
        assert!(status.message().len() < 6000, "{}", status.message().len());
    }

    #[test]
    fn invalid_argument_round_trips_with_field_violations() {
        let mut validator = Validator::new();
        validator.required_str("agent.id", "", 128);
        validator.check(false, "action.estimated_cost", "must not be negative");
        let error = validator.finish().unwrap_err();
        let status = error.to_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let back = WardenError::from_status(&status);
        assert_eq!(back.category, Category::Permanent);
        assert!(!back.retryable());
        assert_eq!(
            back.violations.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(),
            ["agent.id", "action.estimated_cost"]
        );
        assert_eq!(back.reason, "INVALID_ARGUMENT");
    }

    #[test]
    fn strings_with_nul_characters_are_refused() {
        let mut validator = Validator::new();
        validator.max_len("event_id", "ok", 8);
        validator.max_len("actor", "a\0b", 8);
        validator.required_str("agent_id", "\0", 8);
        let error = validator.finish().unwrap_err();
        assert_eq!(
            error.violations.iter().map(|v| (v.field.as_str(), v.description.as_str())).collect::<Vec<_>>(),
            [("actor", "must not contain NUL characters"), ("agent_id", "must not contain NUL characters")]
        );
    }

    #[test]
    fn transient_errors_carry_retry_info() {
        let error = WardenError::new(Category::Transient, "OUTBOX_FULL", "outbox is full")
            .with_retry_after(Duration::from_millis(250));
        let back = WardenError::from_status(&error.to_status());
        assert_eq!(back.code, Code::Unavailable);
        assert_eq!(back.retry_after, Some(Duration::from_millis(250)));
        assert!(back.retryable());
        assert_eq!(back.severity, Severity::Recoverable);
    }

    #[test]
    fn bare_statuses_are_classified_by_code() {
        let cases = [
            (Code::Unavailable, Category::Transient, true),
            (Code::DeadlineExceeded, Category::Transient, true),
            (Code::PermissionDenied, Category::PolicyViolation, false),
            (Code::InvalidArgument, Category::Permanent, false),
            (Code::NotFound, Category::Permanent, false),
            (Code::Internal, Category::Internal, false),
        ];
        for (code, category, retryable) in cases {
            let error = WardenError::from_status(&Status::new(code, "x"));
            assert_eq!(error.category, category, "{code:?}");
            assert_eq!(error.retryable(), retryable, "{code:?}");
        }
    }

    #[test]
    fn categories_round_trip_through_names() {
        for category in [
            Category::Transient,
            Category::Permanent,
            Category::PolicyViolation,
            Category::ExternalService,
            Category::Internal,
        ] {
            assert_eq!(Category::parse(category.as_str()), Some(category));
        }
    }
}
