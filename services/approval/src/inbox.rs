//! The web inbox: pending approvals with everything a reviewer needs,
//! approve or deny with a comment, and the history. Server-rendered HTML,
//! no JavaScript.
//!
//! Sign-in takes an API key or an OIDC token (checked by the shared auth
//! layer's verifiers) and exchanges it for a session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` under TLS). The credential is re-checked on
//! every request, so a revoked key ends its sessions. Sessions live in the
//! database: every replica behind a load balancer knows them, a restart
//! keeps them, and signing out ends them everywhere. The database holds
//! nothing that signs anyone in: a session is found by a hash of its
//! cookie, and the credential is sealed (AES-256-GCM) under a key derived
//! from the cookie, which only the browser has. Every form carries
//! the session's CSRF token; every page has a strict Content-Security-Policy
//! (no scripts at all) and is never cached. Reviewers see the canonical
//! action whose hash redemption checks.

use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hmac::Mac;
use serde::Deserialize;
use sha2::Digest;
use subtle::ConstantTimeEq;
use warden_auth::web::Denial;
use warden_auth::{Auth, Caller, Principal, Secret};

use crate::approvals::Approvals;
use crate::store::{ApprovalRow, SessionRow, State as ApprovalState};

const COOKIE: &str = "warden_session";
/// The sign-in form's CSRF token, double-submitted: set with the form, sent
/// back with it. A form posted from another site carries neither (the
/// cookie is `SameSite=Strict`), so nobody can sign a reviewer in to
/// someone else's session.
const LOGIN_COOKIE: &str = "warden_login";
const LOGIN_TTL: Duration = Duration::from_secs(3600);
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const CSP: &str = "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top}\
pre{background:#f6f6f6;padding:.6rem;overflow:auto}.pending{color:#a60}.approved,.redeemed{color:#070}\
.denied,.expired,.cancelled{color:#a00}textarea{width:100%;height:4rem}button{margin:.3rem .6rem 0 0;padding:.4rem 1rem}\
.error{background:#fee;padding:.6rem}nav{margin-bottom:1rem}.inline{display:inline}";

#[derive(Clone)]
pub struct Inbox {
    approvals: Arc<Approvals>,
    auth: Arc<Auth>,
    secure_cookies: bool,
}

/// Where a session's row is: a hash of its cookie, so a reader of the
/// database cannot present it.
fn session_key(cookie: &str) -> String {
    hex::encode(sha2::Sha256::digest(format!("warden inbox session id:{cookie}")))
}

/// The cipher sealing a session's credential, keyed by the cookie (a
/// different derivation from [`session_key`]'s).
fn session_cipher(cookie: &str) -> Aes256Gcm {
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(cookie.as_bytes()).expect("any key length");
    mac.update(b"warden inbox session credential");
    Aes256Gcm::new(&mac.finalize().into_bytes())
}

/// The credential sealed for the session `cookie`: a random nonce, then
/// the ciphertext, bound to the row's key.
fn seal(cookie: &str, token: &Secret) -> Vec<u8> {
    use rand::RngCore;
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let aad = session_key(cookie);
    let sealed = session_cipher(cookie)
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: token.expose().as_bytes(), aad: aad.as_bytes() })
        .expect("sealing a short credential");
    [nonce.as_slice(), &sealed].concat()
}

/// The credential of the session `cookie`, if `sealed` opens with it.
fn unseal(cookie: &str, sealed: &[u8]) -> Option<Secret> {
    if sealed.len() < 12 {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    let aad = session_key(cookie);
    let plain = session_cipher(cookie)
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: aad.as_bytes() })
        .ok()?;
    Some(Secret::new(String::from_utf8(plain).ok()?))
}

fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// HTML-escapes text.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, principal: Option<&Principal>, csrf: &str, body: &str) -> Response {
    let nav = match principal {
        Some(p) => format!(
            "<nav>Signed in as <b>{}</b> · <a href=\"/approvals\">Pending</a> · <a href=\"/history\">History</a> \
             <form method=\"post\" action=\"/logout\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Sign out</button></form></nav>",
            escape(&p.id),
            escape(csrf)
        ),
        None => String::new(),
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · Warden approvals</title>\
         <link rel=\"stylesheet\" href=\"/static/inbox.css\"></head><body>{nav}<h1>{}</h1>{body}</body></html>",
        escape(title),
        escape(title)
    );
    secured((StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn time_left(row: &ApprovalRow, now_micros: i64) -> String {
    let left = (row.expires_at_micros - now_micros).max(0) / 1_000_000;
    if row.state != ApprovalState::Pending {
        return "-".into();
    }
    format!("{}m {}s", left / 60, left % 60)
}

impl Inbox {
    pub fn new(approvals: Arc<Approvals>, auth: Arc<Auth>, secure_cookies: bool) -> Inbox {
        Inbox { approvals, auth, secure_cookies }
    }

    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/", get(|| async { Redirect::to("/approvals") }))
            .route("/static/inbox.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }))
            .route("/login", get(login_page).post(login))
            .route("/logout", post(logout))
            .route("/approvals", get(pending))
            .route("/history", get(history))
            .route("/approvals/{id}", get(detail))
            .route("/approvals/{id}/review", post(review))
            .with_state(self)
    }

    /// The signed-in principal and the session's CSRF token, re-checking
    /// the credential (a revoked key ends the session) and that it may use
    /// `METHOD route` as the role table says. Not signed in: a redirect to
    /// the sign-in page; refused by the table: the refusal's page; the
    /// database unavailable: an error page saying so (not a sign-out).
    async fn session(
        &self,
        headers: &HeaderMap,
        remote: SocketAddr,
        (method, route): (&str, &str),
    ) -> Result<(Arc<Principal>, String), Response> {
        let to_login = || secured(Redirect::to("/login").into_response());
        let id = cookie(headers, COOKIE).ok_or_else(to_login)?;
        let key = session_key(&id);
        let row = match self.approvals.store.session(&key, self.approvals.clock.now_micros()).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err(to_login()),
            Err(error) => {
                tracing::warn!(%error, "cannot read an inbox session");
                let body = "<p class=\"error\">The approval store is unavailable; try again shortly.</p>";
                let mut response = page("Unavailable", None, "", body);
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Err(response);
            }
        };
        let admitted = match unseal(&id, &row.sealed_credential) {
            Some(token) => self.admit(&token, remote, method, route).await,
            None => Err(Denial {
                code: tonic::Code::Unauthenticated,
                message: "the session's credential does not open".into(),
                retry_after: None,
            }),
        };
        match admitted {
            Ok(principal) => Ok((principal, row.csrf)),
            Err(denial) if denial.code == tonic::Code::Unauthenticated => {
                tracing::info!(principal = %row.principal, reason = %denial.message, "inbox session ended: its credential no longer signs in");
                if let Err(error) = self.approvals.store.delete_session(&key).await {
                    tracing::warn!(%error, "cannot end an inbox session");
                }
                Err(to_login())
            }
            Err(denial) => Err(refused(None, row.csrf.as_str(), &denial)),
        }
    }

    /// The CSRF token of the request's session, if it has one.
    async fn session_csrf(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers, COOKIE)?;
        match self.approvals.store.session(&session_key(&id), self.approvals.clock.now_micros()).await {
            Ok(row) => row.map(|row| row.csrf),
            Err(error) => {
                tracing::warn!(%error, "cannot read an inbox session");
                None
            }
        }
    }

    /// The principal behind `token`, admitted to `METHOD route` by the role
    /// table (with its throttle on bad credentials and its `auth_denied`
    /// events). With authentication off there is no principal to review
    /// as: the inbox refuses.
    async fn admit(
        &self,
        token: &Secret,
        remote: SocketAddr,
        method: &str,
        route: &str,
    ) -> Result<Arc<Principal>, Denial> {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| Denial {
            code: tonic::Code::Unauthenticated,
            message: "malformed credential".into(),
            retry_after: None,
        })?;
        headers.insert(header::AUTHORIZATION, value);
        match self.auth.admit_http("inbox", method, route, &headers, Some(remote)).await? {
            Caller::Principal(principal) => Ok(principal),
            Caller::Anonymous => Err(Denial {
                code: tonic::Code::FailedPrecondition,
                message: "the inbox needs authentication on: reviews are made by a principal".into(),
                retry_after: None,
            }),
        }
    }
}

/// The page for a refusal, with the status (and `Retry-After`) the role
/// table's answer maps to.
fn refused(principal: Option<&Principal>, csrf: &str, denial: &Denial) -> Response {
    let body = format!("<p class=\"error\">Refused: {}</p>", escape(&denial.message));
    let mut response = page("Refused", principal, csrf, &body);
    *response.status_mut() = denial.status();
    if let Some(value) = denial.retry_after_header() {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(&prefix))
        .map(str::to_owned)
}

fn set_cookie(response: &mut Response, cookie: &str) {
    response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(cookie).expect("cookie"));
}

async fn login_page(State(inbox): State<Inbox>) -> Response {
    let csrf = random_token();
    let body = format!(
        "<p>Sign in with your Warden API key or your SSO token.</p>\
        <form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
        <label>Key or token <input type=\"password\" name=\"token\" autocomplete=\"off\" required></label>\
        <button type=\"submit\">Sign in</button></form>",
        escape(&csrf)
    );
    let mut response = page("Sign in", None, "", &body);
    set_cookie(
        &mut response,
        &format!(
            "{LOGIN_COOKIE}={csrf}; HttpOnly; SameSite=Strict; Path=/login; Max-Age={}{}",
            LOGIN_TTL.as_secs(),
            if inbox.secure_cookies { "; Secure" } else { "" }
        ),
    );
    response
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    csrf: String,
}

async fn login(
    State(inbox): State<Inbox>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let issued = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if issued.is_empty() || !bool::from(issued.as_bytes().ct_eq(form.csrf.as_bytes())) {
        tracing::warn!("inbox sign-in refused: the form's csrf token is missing or does not match");
        let mut response = page(
            "Sign in",
            None,
            "",
            "<p class=\"error\">Sign-in refused: this form expired or was not this site's.</p>\
             <p><a href=\"/login\">Sign in again</a></p>",
        );
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let token = Secret::new(form.token.trim());
    match inbox.admit(&token, remote, "POST", "/login").await {
        Ok(principal) => {
            let id = random_token();
            let now = inbox.approvals.clock.now_micros();
            let session = SessionRow {
                principal: principal.id.clone(),
                sealed_credential: seal(&id, &token),
                csrf: random_token(),
                created_at_micros: now,
                expires_at_micros: now + SESSION_TTL.as_micros() as i64,
            };
            if let Err(error) = inbox.approvals.store.insert_session(&session_key(&id), &session, now).await {
                tracing::warn!(%error, "cannot store an inbox session");
                let body =
                    "<p class=\"error\">Sign-in failed: the approval store is unavailable; try again shortly.</p>";
                let mut response = page("Sign in", None, "", body);
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return response;
            }
            tracing::info!(principal = %principal.id, "inbox sign-in");
            let cookie = format!(
                "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
                SESSION_TTL.as_secs(),
                if inbox.secure_cookies { "; Secure" } else { "" }
            );
            let mut response = Redirect::to("/approvals").into_response();
            set_cookie(&mut response, &cookie);
            // The sign-in form's token is spent.
            set_cookie(&mut response, &format!("{LOGIN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/login; Max-Age=0"));
            secured(response)
        }
        Err(denial) => {
            let body = format!(
                "<p class=\"error\">Sign-in refused: {}</p><p><a href=\"/login\">Try again</a></p>",
                escape(&denial.message)
            );
            let mut response = page("Sign in", None, "", &body);
            *response.status_mut() = denial.status();
            if let Some(value) = denial.retry_after_header() {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(inbox): State<Inbox>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    // Signing out needs only the session's CSRF token: the row is deleted
    // whatever the credential may still do.
    if let Some(csrf) = inbox.session_csrf(&headers).await
        && bool::from(csrf.as_bytes().ct_eq(form.csrf.as_bytes()))
        && let Some(id) = cookie(&headers, COOKIE)
        && let Err(error) = inbox.approvals.store.delete_session(&session_key(&id)).await
    {
        tracing::warn!(%error, "cannot end an inbox session");
    }
    let mut response = Redirect::to("/login").into_response();
    set_cookie(&mut response, &format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"));
    secured(response)
}

fn rows_table(rows: &[ApprovalRow], now: i64) -> String {
    if rows.is_empty() {
        return "<p>Nothing here.</p>".into();
    }
    let mut html = String::from(
        "<table><tr><th>Agent</th><th>Action</th><th>Cost</th><th>Why</th><th>Correlation</th><th>State</th><th>Reviews</th><th>Time left</th></tr>",
    );
    for row in rows {
        let action: serde_json::Value = serde_json::from_str(&row.action_json).unwrap_or_default();
        html.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"/approvals/{}\">{}</a> on {}<br><code>{}</code></td><td>{}</td><td>{}<br><small>{}</small></td>\
             <td>{}</td><td class=\"{}\">{}</td><td>{}/{}</td><td>{}</td></tr>",
            escape(&row.agent_id),
            escape(&row.id),
            escape(action["type"].as_str().unwrap_or("")),
            escape(action["resource"].as_str().unwrap_or("")),
            escape(&action["params"].to_string()),
            escape(&action["estimated_cost"].to_string()),
            escape(&row.reasons.join("; ")),
            escape(&row.rules.join(", ")),
            escape(&row.correlation_id),
            row.state.as_str().to_lowercase(),
            row.state.as_str().to_lowercase(),
            row.approvers().len(),
            row.min_approvals,
            time_left(row, now),
        ));
    }
    html.push_str("</table>");
    html
}

async fn pending(
    State(inbox): State<Inbox>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (principal, csrf) = match inbox.session(&headers, remote, ("GET", "/approvals")).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let rows = match inbox.approvals.store.list(Some(ApprovalState::Pending), None, None, 500).await {
        Ok(rows) => rows,
        Err(error) => return unavailable("Pending approvals", &principal, &csrf, &error.to_string()),
    };
    // What `ListApprovals` with `reviewable_by_me` answers.
    let mine: Vec<ApprovalRow> = rows
        .into_iter()
        .filter(|row| {
            inbox.approvals.may_see(&principal, row).is_ok()
                && inbox.approvals.may_review(row, &principal).is_ok()
                && !row.reviews.iter().any(|r| r.reviewer == principal.id)
        })
        .collect();
    page("Pending approvals", Some(&principal), &csrf, &rows_table(&mine, inbox.approvals.clock.now_micros()))
}

/// A page saying the store could not answer (503).
fn unavailable(title: &str, principal: &Principal, csrf: &str, error: &str) -> Response {
    let mut response = page(title, Some(principal), csrf, &format!("<p class=\"error\">{}</p>", escape(error)));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}

async fn history(
    State(inbox): State<Inbox>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (principal, csrf) = match inbox.session(&headers, remote, ("GET", "/history")).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let rows = match inbox.approvals.store.list(None, None, None, 100).await {
        Ok(rows) => rows,
        Err(error) => return unavailable("History", &principal, &csrf, &error.to_string()),
    };
    // What `ListApprovals` answers this principal.
    let visible: Vec<ApprovalRow> =
        rows.into_iter().filter(|row| inbox.approvals.may_see(&principal, row).is_ok()).collect();
    page("History", Some(&principal), &csrf, &rows_table(&visible, inbox.approvals.clock.now_micros()))
}

async fn detail(
    State(inbox): State<Inbox>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (principal, csrf) = match inbox.session(&headers, remote, ("GET", "/approvals/{id}")).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let row = match inbox.approvals.store.get(&id).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            let mut response = page("Not found", Some(&principal), &csrf, "<p>No such approval request.</p>");
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
        Err(error) => return unavailable("Approval", &principal, &csrf, &error.to_string()),
    };
    // What `GetApproval` answers this principal.
    if let Err(message) = inbox.approvals.may_see(&principal, &row) {
        let denial = Denial { code: tonic::Code::PermissionDenied, message, retry_after: None };
        return refused(Some(&principal), &csrf, &denial);
    }
    let action: serde_json::Value = serde_json::from_str(&row.action_json).unwrap_or_default();
    let mut body = format!(
        "<p>Agent <b>{}</b> (asked by {}) wants to run exactly this action; approving it allows this and nothing else:</p>\
         <pre>{}</pre><p>Hash <code>{}</code></p>\
         <table><tr><th>State</th><td class=\"{}\">{}</td></tr><tr><th>Why</th><td>{} <small>({})</small></td></tr>\
         <tr><th>Asked by</th><td>{}</td></tr>\
         <tr><th>Correlation</th><td>{}</td></tr><tr><th>Route</th><td>{} (needs {} approval(s))</td></tr>\
         <tr><th>Time left</th><td>{}</td></tr><tr><th>Outcome</th><td>{}</td></tr></table><h2>Reviews</h2>",
        escape(&row.agent_id),
        escape(&row.requested_by),
        escape(&serde_json::to_string_pretty(&action).unwrap_or_default()),
        escape(&row.action_hash),
        row.state.as_str().to_lowercase(),
        row.state.as_str().to_lowercase(),
        escape(&row.reasons.join("; ")),
        escape(&row.rules.join(", ")),
        escape(&row.requesters.join(", ")),
        escape(&row.correlation_id),
        escape(&row.route),
        row.min_approvals,
        time_left(&row, inbox.approvals.clock.now_micros()),
        escape(&row.outcome_reason),
    );
    if row.reviews.is_empty() {
        body.push_str("<p>None yet.</p>");
    }
    for review in &row.reviews {
        body.push_str(&format!(
            "<p><b>{}</b> {}: {}</p>",
            escape(&review.reviewer),
            if review.approve { "approved" } else { "denied" },
            escape(&review.comment)
        ));
    }
    match inbox.approvals.may_review(&row, &principal) {
        Ok(()) if row.state == ApprovalState::Pending => body.push_str(&format!(
            "<form method=\"post\" action=\"/approvals/{}/review\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>Comment<textarea name=\"comment\" maxlength=\"4096\"></textarea></label>\
             <button type=\"submit\" name=\"decision\" value=\"approve\" id=\"approve\">Approve</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\" id=\"deny\">Deny</button></form>",
            escape(&row.id),
            escape(&csrf)
        )),
        Ok(()) => {}
        Err(why) => body.push_str(&format!("<p>You cannot review this request: {}</p>", escape(&why))),
    }
    page(&format!("Approval {}", row.id), Some(&principal), &csrf, &body)
}

#[derive(Deserialize)]
struct ReviewForm {
    csrf: String,
    decision: String,
    #[serde(default)]
    comment: String,
}

async fn review(
    State(inbox): State<Inbox>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ReviewForm>,
) -> Response {
    let (principal, csrf) = match inbox.session(&headers, remote, ("POST", "/approvals/{id}/review")).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    if !bool::from(csrf.as_bytes().ct_eq(form.csrf.as_bytes())) {
        let mut response = page(
            "Refused",
            Some(&principal),
            &csrf,
            "<p class=\"error\">The form's CSRF token does not match your session.</p>",
        );
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let approve = match form.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            let mut response =
                page("Refused", Some(&principal), &csrf, "<p class=\"error\">decision must be approve or deny</p>");
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    if form.comment.len() > 4096 {
        let mut response =
            page("Refused", Some(&principal), &csrf, "<p class=\"error\">comment: at most 4096 bytes</p>");
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    }
    match inbox.approvals.review(&id, &principal, approve, &form.comment).await {
        Ok(_) => secured(Redirect::to(&format!("/approvals/{id}")).into_response()),
        Err(error) => {
            // The status `Review` would answer, as HTTP.
            let status = warden_auth::web::status_for(warden_errors::Classify::code(&error));
            let body = format!(
                "<p class=\"error\">{}</p><p><a href=\"/approvals/{}\">Back</a></p>",
                escape(&error.to_string()),
                escape(&id)
            );
            let mut response = page("Review refused", Some(&principal), &csrf, &body);
            *response.status_mut() = status;
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_credential_opens_only_with_its_own_cookie() {
        let cookie = random_token();
        let token = Secret::new("wk_live_secret_credential");
        let sealed = seal(&cookie, &token);
        assert_eq!(unseal(&cookie, &sealed).expect("opens").expose(), token.expose());
        assert!(!sealed.windows(token.expose().len()).any(|w| w == token.expose().as_bytes()));
        // Another cookie, or the sealed bytes changed: nothing.
        assert!(unseal(&random_token(), &sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(unseal(&cookie, &tampered).is_none());
        assert!(unseal(&cookie, &sealed[..8]).is_none());
        // Sealing twice gives different bytes (a fresh nonce each time).
        assert_ne!(seal(&cookie, &token), sealed);
        // The row's key is a hash: stable, and not the cookie.
        assert_eq!(session_key(&cookie), session_key(&cookie));
        assert_ne!(session_key(&cookie), cookie);
        assert_ne!(session_key(&cookie), session_key(&random_token()));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
