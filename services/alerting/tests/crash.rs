//! Kill the alerting service (SIGKILL) while an alert fires and while a
//! notification is being delivered: after a restart the resolved
//! notification still arrives, a delivered notification is not sent again,
//! and one whose delivery was cut off is delivered.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(data: &std::path::Path, routing: &std::path::Path, port: u16, http_port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warden-alerting"))
        // Durability, not identity, is under test here.
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", "", "--insecure-no-auth"])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .arg("--data-dir")
        .arg(data)
        .arg("--routing")
        .arg(routing)
        .env("WARDEN__TICK_INTERVAL", "50ms")
        .env("WARDEN__OUTBOX_INTERVAL", "20ms")
        .env("WARDEN__DELIVERY_LEASE", "2s")
        .env("WARDEN__TELEMETRY__LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warden-alerting")
}

async fn wait_ready(http_port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    loop {
        if let Ok(response) = client.get(format!("http://127.0.0.1:{http_port}/-/ready")).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "warden-alerting did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(http_port: u16, name: &str, ends_at: Option<String>) {
    let mut alert = serde_json::json!({"labels": {"alertname": name, "severity": "critical"}});
    if let Some(ends) = ends_at {
        alert["endsAt"] = serde_json::json!(ends);
    }
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http_port}/api/v2/alerts"))
        .json(&serde_json::json!([alert]))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

async fn silences(http_port: u16) -> Vec<serde_json::Value> {
    let url = format!("http://127.0.0.1:{http_port}/api/v2/silences");
    let list: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    list.as_array().unwrap().clone()
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_resolved_notification_and_sends_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = warden_testkit::Receiver::start().await;
    let url = receiver.url.clone();
    let delivered = || -> Vec<(String, String)> {
        receiver
            .got()
            .iter()
            .map(|body| {
                (
                    body["status"].as_str().unwrap_or("").to_owned(),
                    body["commonLabels"]["alertname"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let routing = dir.path().join("alertmanager.yml");
    std::fs::write(
        &routing,
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 100ms\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: '{url}'}}]\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (port, http_port) = (free_port(), free_port());

    // 1. An alert fires and is delivered; the service is killed while it fires.
    let mut child = spawn(&data, &routing, port, http_port);
    wait_ready(http_port).await;
    post(http_port, "Firing", None).await;
    until("the firing notification", || delivered().len() == 1).await;
    // Two silences: one stays, one is expired before the kill.
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for instance in ["kept", "expired"] {
        let silence = serde_json::json!({
            "matchers": [{"name": "instance", "value": instance, "isRegex": false}],
            "endsAt": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            "createdBy": "ada", "comment": "maintenance",
        });
        let created: serde_json::Value = client
            .post(format!("http://127.0.0.1:{http_port}/api/v2/silences"))
            .json(&silence)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(created["silenceID"].as_str().unwrap().to_owned());
    }
    let deleted =
        client.delete(format!("http://127.0.0.1:{http_port}/api/v2/silence/{}", ids[1])).send().await.unwrap();
    assert!(deleted.status().is_success());
    child.kill().unwrap();
    child.wait().unwrap();

    // 2. Restarted: the silence is still active, the expired one still
    //    expired; the alert resolves; the receiver hears the resolution once
    //    and the firing notification is not repeated.
    let mut child = spawn(&data, &routing, port, http_port);
    wait_ready(http_port).await;
    let states: Vec<(String, String)> = silences(http_port)
        .await
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["status"]["state"].as_str().unwrap().to_owned()))
        .collect();
    assert!(states.contains(&(ids[0].clone(), "active".into())), "{states:?}");
    assert!(states.contains(&(ids[1].clone(), "expired".into())), "{states:?}");
    post(http_port, "Firing", Some(chrono::Utc::now().to_rfc3339())).await;
    until("the resolved notification", || delivered().len() == 2).await;

    // 3. A new alert whose delivery is cut off by SIGKILL mid-request.
    receiver.script([warden_testkit::Answer::Hang]);
    post(http_port, "CutOff", None).await;
    until("the delivery to start", || receiver.pending_answers() == 0).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn(&data, &routing, port, http_port);
    wait_ready(http_port).await;
    until("the cut-off notification, after the lease", || delivered().len() == 3).await;
    // Nothing else arrives (no duplicate of either earlier notification).
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let delivered = delivered();
    let expected: Vec<(String, String)> = [("firing", "Firing"), ("resolved", "Firing"), ("firing", "CutOff")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(delivered, expected);
}
