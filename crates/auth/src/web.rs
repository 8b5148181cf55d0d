//! The HTTP surfaces' side of identity and access (the approval inbox,
//! Alertmanager's API): the same credentials, the same role table
//! ([`crate::authz::HTTP_TABLE`], whose routes answer what the RPC they
//! mirror would), the same per-principal rate limits, the same throttle on
//! bad credentials and the same `auth_denied` events as gRPC.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use crate::principal::{Caller, Principal};
use crate::tls::PeerInfo;
use crate::{Auth, Rejection};

/// The key of an HTTP route in the auth state.
pub(crate) fn route_key(surface: &str, method: &str, route: &str) -> String {
    format!("{surface} {method} {route}")
}

/// Why an HTTP request was refused, and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The gRPC code the same refusal has on the gRPC surface.
    pub code: Code,
    pub message: String,
    /// For `429`: when to try again (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Denial {
    /// The HTTP status for the code.
    pub fn status(&self) -> http::StatusCode {
        status_for(self.code)
    }

    /// `Retry-After` in whole seconds (at least one), when there is one.
    pub fn retry_after_header(&self) -> Option<http::HeaderValue> {
        self.retry_after.map(|wait| http::HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64))
    }
}

/// The HTTP status that says what a gRPC code says.
pub fn status_for(code: Code) -> http::StatusCode {
    use http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        Code::InvalidArgument | Code::OutOfRange => S::BAD_REQUEST,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => S::CONFLICT,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
    }
}

impl Auth {
    /// Admits an HTTP request to `METHOD route` of `surface`: throttles a
    /// source sending bad credentials, authenticates the bearer credential
    /// in `headers`, checks the route's roles and the principal's rate
    /// limits, counts the outcome and records refusals. With
    /// authentication off, everyone is admitted as [`Caller::Anonymous`].
    pub async fn admit_http(
        &self,
        surface: &str,
        method: &str,
        route: &str,
        headers: &http::HeaderMap,
        remote: Option<SocketAddr>,
    ) -> Result<Caller, Denial> {
        let entry = self.http_entry(surface, method, route)?;
        if self.insecure() {
            entry.count(Code::Ok);
            return Ok(Caller::Anonymous);
        }
        let peer = PeerInfo { remote, certificate: None };
        let principal = match self.authenticate_throttled(headers, Some(&peer)).await {
            Ok(principal) => principal,
            Err(rejection) => return Err(self.deny_http(&entry, &peer, &rejection)),
        };
        self.check_http(&entry, &principal)?;
        entry.count(Code::Ok);
        Ok(Caller::Principal(principal))
    }

    /// Checks a known principal (an inbox session's) against `METHOD
    /// route`: its roles and rate limits, counted and recorded as
    /// [`Auth::admit_http`] does.
    pub fn admit_principal(
        &self,
        surface: &str,
        method: &str,
        route: &str,
        principal: &Principal,
    ) -> Result<(), Denial> {
        let entry = self.http_entry(surface, method, route)?;
        if self.insecure() {
            return Ok(());
        }
        self.check_http(&entry, principal)?;
        entry.count(Code::Ok);
        Ok(())
    }

    /// The table's entry for `METHOD route`; a route missing from the
    /// table is refused (fail closed; the surfaces' tests walk the table,
    /// so this is never reached).
    fn http_entry(&self, surface: &str, method: &str, route: &str) -> Result<Arc<crate::MethodEntry>, Denial> {
        self.http_methods.get(&route_key(surface, method, route)).cloned().ok_or_else(|| Denial {
            code: Code::PermissionDenied,
            message: format!("{method} {route} is not in the authorization table"),
            retry_after: None,
        })
    }

    fn check_http(&self, entry: &crate::MethodEntry, principal: &Principal) -> Result<(), Denial> {
        let denied = |status: tonic::Status| {
            entry.count(status.code());
            let retry_after = warden_errors::WardenError::from_status(&status).retry_after;
            Denial { code: status.code(), message: status.message().to_owned(), retry_after }
        };
        self.authorize(entry, principal).map_err(denied)?;
        self.rate_limit(entry, principal).map_err(denied)
    }

    fn deny_http(&self, entry: &crate::MethodEntry, peer: &PeerInfo, rejection: &Rejection) -> Denial {
        let status = self.deny_unauthenticated(entry, Some(peer), rejection);
        entry.count(status.code());
        Denial { code: status.code(), message: rejection.message.clone(), retry_after: rejection.retry_after }
    }
}
