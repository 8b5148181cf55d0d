//! `docker-compose.yml` checked without a Docker engine: every Warden
//! service's environment is a configuration its binary accepts, every file
//! it mounts or the image copies exists, and no two services publish the
//! same host port.

use std::collections::{HashMap, HashSet};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_compose_stack_is_consistent_with_the_code() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let mut ports = HashSet::new();
    let mut checked = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let host = port.as_str().unwrap().split(':').next().unwrap().to_owned();
            assert!(ports.insert(host.clone()), "host port {host} is published twice ({name})");
        }
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(root().join(source).exists(), "{name} mounts {source}, which does not exist");
            }
        }
        let env: HashMap<String, String> = service["environment"]
            .as_mapping()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let value = match v {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().unwrap().to_owned(), value)
            })
            .collect();
        let command = service["command"].as_sequence().and_then(|c| c.first()).and_then(|c| c.as_str()).unwrap_or("");
        let sources = warden_config::Sources { env, ..Default::default() };
        let loaded = match command {
            "warden-policy-engine" => {
                warden_config::load::<warden_policy_engine::PolicyEngineConfig>(&sources).map(drop)
            }
            "warden-audit" => warden_config::load::<warden_audit::AuditConfig>(&sources).map(drop),
            "warden-approval" => warden_config::load::<warden_approval::ApprovalConfig>(&sources).map(drop),
            "warden-alerting" => warden_config::load::<warden_alerting::AlertingConfig>(&sources).map(drop),
            _ => continue,
        };
        assert!(loaded.is_ok(), "{name}: {}", loaded.unwrap_err());
        // The health check runs the service's own binary.
        let check = service["healthcheck"]["test"].as_sequence().unwrap();
        assert_eq!(check[1].as_str(), Some(command), "{name}");
        checked.push(command.to_owned());
    }
    checked.sort();
    assert_eq!(checked, ["warden-alerting", "warden-approval", "warden-audit", "warden-policy-engine"]);
    // Every path the image copies exists.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(root().join(source).exists(), "Dockerfile copies {source}, which does not exist");
    }
}
