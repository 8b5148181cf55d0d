//! Fakes that tests deliver to: an HTTP receiver that records the JSON it
//! is sent and answers from a script (a status with `Retry-After`, or no
//! answer at all), and an SMTP server that records each message's DATA.
//! A dev-dependency of the services and the cross-service tests; nothing
//! in production depends on it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// What the receiver answers a request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// This status, with a `Retry-After` header when given.
    Status(u16, Option<String>),
    /// No answer, ever: the sender waits until it gives up or dies.
    Hang,
    /// `307 Temporary Redirect` to this URL (a client that follows it
    /// sends the same body there).
    Redirect(String),
}

#[derive(Debug, Default)]
struct State {
    got: Vec<serde_json::Value>,
    /// Each request's `Authorization` header, in order.
    authorizations: Vec<Option<String>>,
    attempts: usize,
    script: VecDeque<Answer>,
}

/// An HTTP receiver on 127.0.0.1: every path accepts a JSON POST. Scripted
/// answers are used first; then it answers 200 and records the body.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        use axum::response::IntoResponse;
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        let app = axum::Router::new().fallback(axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let shared = shared.clone();
                async move {
                    let answer = {
                        let mut state = shared.lock().expect("not poisoned");
                        state.attempts += 1;
                        let authorization =
                            headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                        state.authorizations.push(authorization);
                        let answer = state.script.pop_front();
                        if answer.is_none() {
                            state.got.push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
                        }
                        answer
                    };
                    match answer {
                        None => axum::http::StatusCode::OK.into_response(),
                        Some(Answer::Status(code, retry_after)) => {
                            let status = axum::http::StatusCode::from_u16(code).expect("a status code");
                            let mut response = status.into_response();
                            if let Some(value) = retry_after {
                                response.headers_mut().insert("retry-after", value.parse().expect("a header value"));
                            }
                            response
                        }
                        Some(Answer::Hang) => std::future::pending().await,
                        Some(Answer::Redirect(to)) => {
                            let mut response = axum::http::StatusCode::TEMPORARY_REDIRECT.into_response();
                            response.headers_mut().insert("location", to.parse().expect("a header value"));
                            response
                        }
                    }
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a port");
        let url = format!("http://{}/hook", listener.local_addr().expect("local address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, state }
    }

    /// The bodies answered with 200, in order.
    pub fn got(&self) -> Vec<serde_json::Value> {
        self.state.lock().expect("not poisoned").got.clone()
    }

    /// Each request's `Authorization` header, answered or not, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.state.lock().expect("not poisoned").authorizations.clone()
    }

    /// Every request, answered or not.
    pub fn attempts(&self) -> usize {
        self.state.lock().expect("not poisoned").attempts
    }

    /// Answers the next requests with these, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().expect("not poisoned").script.extend(answers);
    }

    /// Scripted answers not used yet.
    pub fn pending_answers(&self) -> usize {
        self.state.lock().expect("not poisoned").script.len()
    }
}

/// An SMTP server on 127.0.0.1 that accepts every message.
#[derive(Debug, Clone)]
pub struct Smtp {
    /// `smtp://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    received: Arc<Mutex<Vec<String>>>,
}

impl Smtp {
    pub async fn start() -> Smtp {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a port");
        let addr = listener.local_addr().expect("local address");
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    if write.write_all(b"220 fake ESMTP\r\n").await.is_err() {
                        return;
                    }
                    let (mut in_data, mut data) = (false, String::new());
                    while let Ok(Some(line)) = lines.next_line().await {
                        if in_data {
                            if line == "." {
                                in_data = false;
                                store.lock().expect("not poisoned").push(std::mem::take(&mut data));
                                let _ = write.write_all(b"250 queued\r\n").await;
                            } else {
                                data.push_str(&line);
                                data.push('\n');
                            }
                            continue;
                        }
                        let reply: &[u8] = match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                            "EHLO" | "HELO" => b"250 fake\r\n",
                            "DATA" => {
                                in_data = true;
                                b"354 go on\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 ok\r\n",
                        };
                        if write.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Smtp { url: format!("smtp://{addr}"), addr: addr.to_string(), received }
    }

    /// Each message's DATA, in order.
    pub fn received(&self) -> Vec<String> {
        self.received.lock().expect("not poisoned").clone()
    }
}
