//! The web inbox in a real headless Chromium: a reviewer signs in with an
//! API key, opens a pending request, approves it with a comment, and an
//! agent waiting on `WatchApproval` receives the approval.

use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use futures::StreamExt;
use warden_approval::{ApprovalConfig, ApprovalServer};
use warden_client::{ApprovalClient, ApprovalOutcome, ClientConfig};
use warden_proto::approval::v1 as pb;
use warden_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use warden_tests::identity::{self, bearer};
use warden_tests::inbox::{csrf_of, get, session_set_cookie, sign_in};
use warden_tests::{Sandbox, channel};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The page's HTML once it contains `expected` (navigations finish on
/// their own time).
async fn until(page: &chromiumoxide::Page, expected: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let html = page.content().await.unwrap_or_default();
        if html.contains(expected) {
            return html;
        }
        assert!(std::time::Instant::now() < deadline, "the page never showed {expected:?}:\n{html}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_approves_in_the_browser_and_the_agent_proceeds() {
    if !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("WARDEN_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "{CHROMIUM} is missing (apt-get install chromium) and WARDEN_REQUIRE_EXTERNAL=1"
        );
        eprintln!("skipping the inbox browser test: {CHROMIUM} is not installed");
        return;
    }
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    let mut config = ApprovalConfig::for_tests(sandbox.data.path().join("approval"));
    config.auth = keys.auth();
    config.http_listen = "127.0.0.1:0".into();
    config.watch_poll = Duration::from_millis(50);
    let approval = ApprovalServer::start(config).await.unwrap();
    let inbox = format!("http://{}", approval.http_addr.unwrap());

    let create = pb::CreateApprovalRequest {
        agent_id: "support-bot".into(),
        action: Some(pb::Action {
            r#type: "issue_refund".into(),
            resource: "order/1234".into(),
            estimated_cost: 150.0,
            params: Some(prost_types::Struct {
                fields: [(
                    "amount".to_string(),
                    prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(150.0)) },
                )]
                .into(),
            }),
        }),
        correlation_id: "ticket-981".into(),
        rules: vec!["large-refunds".into()],
        reasons: vec!["refunds over 100 need a manager".into()],
        ..Default::default()
    };
    let id = open(&approval.url(), keys.token("service"), create).await;
    let waiter = ApprovalClient::new(ClientConfig::new(approval.url()).api_key(keys.token("agent"))).unwrap();
    let wait = tokio::spawn({
        let id = id.clone();
        async move { waiter.wait_for_approval(&id, Duration::from_secs(60)).await }
    });

    let profile = tempfile::tempdir().unwrap();
    let browser_config = BrowserConfig::builder()
        .chrome_executable(CHROMIUM)
        .no_sandbox()
        .user_data_dir(profile.path())
        .args([
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .window_size(1200, 900)
        .build()
        .unwrap();
    let (mut browser, mut handler) = Browser::launch(browser_config).await.unwrap();
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let screenshots = std::env::var("WARDEN_SCREENSHOTS").ok();

    let page = browser.new_page(format!("{inbox}/login")).await.unwrap();
    page.find_element("input[name=token]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap()
        .type_str(keys.token("approver"))
        .await
        .unwrap();
    page.find_element("button[type=submit]").await.unwrap().click().await.unwrap();
    let list = until(&page, "Pending approvals").await;
    assert!(
        list.contains("Pending approvals") && list.contains("issue_refund") && list.contains("ticket-981"),
        "{list}"
    );
    if let Some(dir) = &screenshots {
        page.save_screenshot(
            chromiumoxide::page::ScreenshotParams::builder().full_page(true).build(),
            format!("{dir}/inbox-pending.png"),
        )
        .await
        .unwrap();
    }
    page.find_element(&format!("a[href='/approvals/{id}']")).await.unwrap().click().await.unwrap();
    let detail = until(&page, "wants to run exactly this action").await;
    assert!(detail.contains("order/1234") && detail.contains("sha256:"), "{detail}");
    page.find_element("textarea[name=comment]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap()
        .type_str("checked the order")
        .await
        .unwrap();
    if let Some(dir) = &screenshots {
        page.save_screenshot(
            chromiumoxide::page::ScreenshotParams::builder().full_page(true).build(),
            format!("{dir}/inbox-detail.png"),
        )
        .await
        .unwrap();
    }
    page.find_element("#approve").await.unwrap().click().await.unwrap();
    let after = until(&page, "checked the order</p>").await;
    assert!(after.contains("approved") && after.contains("checked the order"), "{after}");

    let outcome = wait.await.unwrap().unwrap();
    match outcome {
        ApprovalOutcome::Approved(approval) => {
            assert_eq!(approval.reviews[0].reviewer, "approver");
            assert_eq!(approval.reviews[0].comment, "checked the order");
        }
        other => panic!("{other:?}"),
    }

    // The pages carry a strict policy, and a form without the session's
    // CSRF token is refused.
    let http = warden_tests::inbox::client();
    // Signing in from another site (no sign-in form first, so no token and
    // no cookie) is refused even with a good key.
    let forged = http.post(format!("{inbox}/login")).form(&[("token", keys.token("approver"))]).send().await.unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.headers().get("set-cookie").is_none());
    let login = sign_in(&http, &inbox, keys.token("approver")).await;
    assert_eq!(login.status(), 303);
    let cookie = session_set_cookie(&login);
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    let forged = http
        .post(format!("{inbox}/approvals/{id}/review"))
        .header("cookie", &session)
        .form(&[("csrf", "guess"), ("decision", "deny")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let listing = http.get(format!("{inbox}/approvals")).header("cookie", &session).send().await.unwrap();
    let csp = listing.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
    // An agent's key does not sign in: the role table refuses it, as
    // ListApprovals would.
    let agent = sign_in(&http, &inbox, keys.token("agent")).await;
    assert_eq!(agent.status(), 403);
    assert!(agent.text().await.unwrap().contains("lacks the role"));

    browser.close().await.unwrap();
    let _ = browser.wait().await;
    events.abort();
    approval.shutdown().await;
}

/// The session's `Set-Cookie` header in a sign-in's answer, attributes and all.
/// Opens an approval request as `token`'s service; its id.
async fn open(url: &str, token: &str, create: pb::CreateApprovalRequest) -> String {
    let mut service = ApprovalServiceClient::new(channel(url).await);
    service.create_approval(bearer(tonic::Request::new(create), token)).await.unwrap().into_inner().id
}

/// Every inbox session row: its key, and everything else in it as bytes.
async fn session_rows(url: &str) -> Vec<(String, Vec<u8>)> {
    use sqlx::Row;
    let select = "SELECT id_hash, principal, sealed_credential, csrf FROM approval_inbox_sessions";
    // The same code for either pool type.
    macro_rules! read {
        ($pool:expr) => {
            sqlx::query(select)
                .fetch_all($pool)
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    let rest = [
                        r.get::<String, _>(1).into_bytes(),
                        r.get::<Vec<u8>, _>(2),
                        r.get::<String, _>(3).into_bytes(),
                    ]
                    .concat();
                    (r.get::<String, _>(0), rest)
                })
                .collect()
        };
    }
    let database = warden_store::Database::connect(url).await.unwrap();
    let rows = match &database {
        warden_store::Database::Sqlite(pool) => read!(pool),
        warden_store::Database::Postgres(pool) => read!(pool),
    };
    database.close().await;
    rows
}

/// Inbox sessions live in the database: a reviewer signed in on one
/// replica (or before a restart) reviews on another, signing out there
/// ends the session everywhere, and the database holds neither the cookie
/// nor the credential.
async fn inbox_sessions_outlive_their_replica(database_url: Option<String>) {
    let sandbox = Sandbox::new(&[]);
    let keys = identity::keys(sandbox.data.path());
    let config = |name: &str| {
        // SQLite: one data directory, served by one process after another.
        let mut config =
            ApprovalConfig::for_tests(sandbox.data.path().join(if database_url.is_some() { name } else { "a" }));
        config.database_url = database_url.clone().unwrap_or_default();
        config.auth = keys.auth();
        config.http_listen = "127.0.0.1:0".into();
        config
    };
    let url = {
        let config = config("a");
        warden_server::runtime::database_url(&config.database_url, &config.data_dir)
    };
    let first = ApprovalServer::start(config("a")).await.unwrap();
    let create = pb::CreateApprovalRequest {
        agent_id: "support-bot".into(),
        action: Some(pb::Action { r#type: "send_email".into(), resource: "customer/42".into(), ..Default::default() }),
        ..Default::default()
    };
    let id = open(&first.url(), keys.token("service"), create).await;

    let http = warden_tests::inbox::client();
    let inbox = format!("http://{}", first.http_addr.unwrap());
    let login = sign_in(&http, &inbox, keys.token("approver")).await;
    assert_eq!(login.status(), 303);
    let session = session_set_cookie(&login).split(';').next().unwrap().to_owned();
    let cookie_value = session.trim_start_matches("warden_session=").to_owned();

    // What a reader of the database gets: no cookie, no credential.
    let rows = session_rows(&url).await;
    assert_eq!(rows.len(), 1);
    let (key, stored) = &rows[0];
    assert_ne!(key, &cookie_value);
    let contains = |needle: &str| stored.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(keys.token("approver")) && !contains(&cookie_value), "a stored session gives a credential away");

    // Another replica (PostgreSQL) or the same data after a restart (SQLite).
    let (first, second) = if database_url.is_some() {
        (Some(first), ApprovalServer::start(config("b")).await.unwrap())
    } else {
        first.shutdown().await;
        (None, ApprovalServer::start(config("a")).await.unwrap())
    };
    let other = format!("http://{}", second.http_addr.unwrap());
    let page = get(&http, &other, &format!("/approvals/{id}"), &session).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Signed in as <b>approver</b>") && html.contains("id=\"approve\""), "{html}");
    let csrf = csrf_of(&html);
    let reviewed = http
        .post(format!("{other}/approvals/{id}/review"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str()), ("decision", "approve"), ("comment", "fine")])
        .send()
        .await
        .unwrap();
    assert_eq!(reviewed.status(), 303);
    let mut client = ApprovalServiceClient::new(channel(&second.url()).await);
    let approval = client
        .get_approval(bearer(tonic::Request::new(pb::GetApprovalRequest { id: id.clone() }), keys.token("approver")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approval.state(), pb::State::Approved);
    assert_eq!(approval.reviews[0].reviewer, "approver");

    // A cookie that is not the session's signs nobody in.
    let forged = format!("warden_session={}", &cookie_value[..cookie_value.len() - 2]);
    assert_eq!(get(&http, &other, "/approvals", &forged).await.status(), 303);

    // Signing out on one ends the session on every replica.
    let out = http
        .post(format!("{other}/logout"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(session_rows(&url).await.is_empty());
    let after = get(&http, &other, "/approvals", &session).await;
    assert_eq!(after.status(), 303);
    assert_eq!(after.headers()["location"], "/login");
    if let Some(first) = first {
        assert_eq!(get(&http, &inbox, "/approvals", &session).await.status(), 303);
        first.shutdown().await;
    }
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_sessions_survive_a_restart_on_sqlite() {
    inbox_sessions_outlive_their_replica(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_sessions_are_shared_by_replicas_on_postgres() {
    let Some(url) = warden_store::testing::postgres_url().await else { return };
    inbox_sessions_outlive_their_replica(Some(url)).await;
}
