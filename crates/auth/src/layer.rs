//! The tower layer in front of every service: authenticate, authorize by
//! method, rate-limit per principal, count every RPC's outcome, and record
//! denials in the audit log.
//!
//! A tonic interceptor cannot see the method name, so this is a layer over
//! the whole router. It never reads an identity from a request header other
//! than the credential itself: the principal it establishes travels in the
//! request's extensions ([`Caller`]), where no client can put one.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::Frame;
use tonic::body::Body;
use tonic::{Code, Status};

use crate::principal::Caller;
use crate::tls::PeerInfo;
use crate::{Auth, MethodEntry};

/// Wraps a service (tonic's `Routes`) with [`Auth`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, auth: self.auth.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
}

fn respond(status: Status) -> http::Response<Body> {
    status.into_http()
}

impl<S> tower_service::Service<http::Request<Body>> for AuthService<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let method = auth.method(request.uri().path());
            if method.open || auth.insecure() {
                request.extensions_mut().insert(Caller::Anonymous);
                let response = inner.call(request).await?;
                return Ok(count(method, response));
            }
            let peer = request.extensions().get::<PeerInfo>();
            let principal = match auth.authenticate_throttled(request.headers(), peer).await {
                Ok(principal) => principal,
                Err(rejection) => {
                    let status = auth.deny_unauthenticated(&method, peer, &rejection);
                    method.count(status.code());
                    return Ok(respond(status));
                }
            };
            if let Err(status) = auth.authorize(&method, &principal) {
                method.count(status.code());
                return Ok(respond(status));
            }
            if let Err(status) = auth.rate_limit(&method, &principal) {
                method.count(status.code());
                return Ok(respond(status));
            }
            request.extensions_mut().insert(Caller::Principal(principal));
            let response = inner.call(request).await?;
            Ok(count(method, response))
        })
    }
}

/// Counts a response's gRPC code: from the headers of a trailers-only
/// response, else from the trailers when the body ends.
fn count(method: Arc<MethodEntry>, response: http::Response<Body>) -> http::Response<Body> {
    if let Some(code) = response.headers().get("grpc-status") {
        method.count(Code::from_bytes(code.as_bytes()));
        return response;
    }
    response.map(|body| Body::new(CountedBody { inner: body, method: Some(method) }))
}

pin_project_lite::pin_project! {
    struct CountedBody {
        #[pin]
        inner: Body,
        method: Option<Arc<MethodEntry>>,
    }

    impl PinnedDrop for CountedBody {
        fn drop(this: Pin<&mut Self>) {
            // The body was dropped before its trailers: the client went away.
            if let Some(method) = this.project().method.take() {
                method.count(Code::Cancelled);
            }
        }
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(method) = this.method.take()
                {
                    let code = trailers.get("grpc-status").map(|v| Code::from_bytes(v.as_bytes())).unwrap_or(Code::Ok);
                    method.count(code);
                }
            }
            Some(Err(status)) => {
                if let Some(method) = this.method.take() {
                    method.count(status.code());
                }
            }
            None => {
                if let Some(method) = this.method.take() {
                    method.count(Code::Ok);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
