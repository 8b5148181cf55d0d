//! `docker-compose.yml` checked without a Docker engine: it is valid
//! against the Compose Specification's own JSON schema
//! (`tests/data/compose-spec/`), every Warden service's environment is a
//! configuration its binary accepts, every file it mounts or the image
//! copies exists, no two services publish the same host port, every
//! long-running service has a health check and every dependency waits for
//! it, and the command the file's header shows does what it says.

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
            "warden-mcp-gateway" => warden_config::load::<warden_mcp_gateway::GatewayConfig>(&sources).map(drop),
            _ => continue,
        };
        assert!(loaded.is_ok(), "{name}: {}", loaded.unwrap_err());
        // The health check runs the service's own binary.
        let check = service["healthcheck"]["test"].as_sequence().unwrap();
        assert_eq!(check[1].as_str(), Some(command), "{name}");
        checked.push(command.to_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        ["warden-alerting", "warden-approval", "warden-audit", "warden-mcp-gateway", "warden-policy-engine"]
    );
    // The gateway's upstreams file is one it accepts.
    let gateway = warden_mcp_gateway::GatewayConfig::default();
    warden_mcp_gateway::upstreams::UpstreamsFile::load(&root().join("deploy/mcp-upstreams.yaml"), &gateway.separator)
        .unwrap();
    // Every path the image copies exists.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(root().join(source).exists(), "Dockerfile copies {source}, which does not exist");
    }
}

fn compose() -> serde_yaml::Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// Services something waits on to have completed: they run once.
fn one_shot(services: &serde_yaml::Mapping) -> HashSet<String> {
    let mut once = HashSet::new();
    for service in services.values() {
        for (dependency, how) in service["depends_on"].as_mapping().into_iter().flatten() {
            if how["condition"].as_str() == Some("service_completed_successfully") {
                once.insert(dependency.as_str().unwrap().to_owned());
            }
        }
    }
    once
}

#[test]
fn every_long_running_service_is_health_checked_and_waited_for() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let once = one_shot(services);
    assert!(once.contains("keys-init"));
    let names: HashSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        if !once.contains(name) {
            let test = service["healthcheck"]["test"].as_sequence();
            assert!(test.is_some_and(|t| t.len() > 1), "{name} has no health check");
        }
        // A dependency is waited for: healthy, or completed when it runs once.
        let depends = &service["depends_on"];
        assert!(depends.is_null() || depends.is_mapping(), "{name}: depends_on without conditions");
        for (dependency, how) in depends.as_mapping().into_iter().flatten() {
            let dependency = dependency.as_str().unwrap();
            assert!(names.contains(dependency), "{name} depends on {dependency}, which is not a service");
            let expected = if once.contains(dependency) { "service_completed_successfully" } else { "service_healthy" };
            assert_eq!(how["condition"].as_str(), Some(expected), "{name} -> {dependency}");
        }
        // A Warden service waits for every service its configuration names.
        if service["command"]
            .as_sequence()
            .and_then(|c| c.first())
            .and_then(|c| c.as_str())
            .is_some_and(|c| c.starts_with("warden-"))
        {
            for value in service["environment"].as_mapping().unwrap().values() {
                let value = value.as_str().unwrap_or_default();
                let Some((_, rest)) = value.split_once("://") else { continue };
                let host = rest.rsplit('@').next().unwrap().split([':', '/']).next().unwrap();
                if names.contains(host) && host != name {
                    assert!(!depends[host].is_null(), "{name} names {host} ({value}) but does not wait for it");
                }
            }
        }
    }
}

/// The header's way to read a key: with Compose's own semantics (an
/// `--entrypoint` given on the command line replaces the service's, and
/// what follows the service name is the command), it runs `cat` on a file
/// that keys-init writes into a volume the service mounts.
#[test]
fn the_headers_key_command_prints_the_key() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let line = text.lines().find(|l| l.contains("docker compose run")).expect("the header shows how to read a key");
    let words: Vec<&str> = line.trim_start_matches('#').split_whitespace().collect();
    assert_eq!(&words[..3], ["docker", "compose", "run"]);
    let mut rest = words[3..].iter();
    let mut entrypoint = None;
    let service = loop {
        match *rest.next().expect("a service name") {
            "--rm" => {}
            "--entrypoint" => entrypoint = rest.next().copied(),
            word if word.starts_with('-') => panic!("unexpected option {word}"),
            word => break word,
        }
    };
    let args: Vec<&str> = rest.copied().collect();
    let compose = compose();
    let service = &compose["services"][service];
    let entrypoint: Vec<String> = match entrypoint {
        Some(entrypoint) => vec![entrypoint.to_owned()],
        None => service["entrypoint"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
    };
    assert_eq!(entrypoint, ["cat"], "the command must run cat itself, not as bash -c's script");
    let [path] = args[..] else { panic!("one file to print: {args:?}") };
    let (dir, file) = path.rsplit_once('/').unwrap();
    let mounted =
        service["volumes"].as_sequence().unwrap().iter().any(|v| v.as_str().unwrap().split(':').nth(1) == Some(dir));
    assert!(mounted, "{dir} is not a volume of the service");
    let principal = file.strip_suffix(".key").unwrap();
    let script = service["command"][0].as_str().unwrap();
    assert!(script.contains(&format!("cd {dir}")) && script.contains(&format!("key {principal} ")), "{script}");
}

/// Validates a compose file (as JSON) against the specification's schema
/// with Python's `jsonschema`: the errors, one per line, or `Ok`.
fn validate(python: &str, json: &str) -> Result<(), String> {
    use std::io::Write;
    let schema = root().join("tests/data/compose-spec/compose-spec.json");
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(json.load(sys.stdin)), key=str)\n\
        for e in errors: print('/'.join(map(str, e.absolute_path)) + ': ' + e.message)\n\
        sys.exit(1 if errors else 0)\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .arg(&schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(json.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() { Ok(()) } else { Err(text) }
}

#[test]
fn the_compose_file_is_valid_against_the_compose_specification() {
    let Some(python) = warden_tests::python::interpreter() else { return };
    let json = serde_json::to_string(&serde_json::to_value(compose()).unwrap()).unwrap();
    if let Err(errors) = validate(&python, &json) {
        panic!("docker-compose.yml does not follow the Compose Specification:\n{errors}");
    }
    // The schema is strict about what it knows: a misspelt key fails.
    let broken = json.replacen("\"healthcheck\"", "\"healthchek\"", 1);
    let errors = validate(&python, &broken).unwrap_err();
    assert!(errors.contains("healthchek"), "{errors}");
}
