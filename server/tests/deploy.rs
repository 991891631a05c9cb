//! The deployment files under `deploy/`, checked offline: each parses, has
//! the fields a deployment depends on (multi-stage non-root image with a
//! health check; three compose nodes with seeds and the secret file; a
//! headless Service, a StatefulSet with volume claims, readiness on
//! `/ready` and the secret from a Secret, a PodDisruptionBudget; a systemd
//! unit with `LimitNOFILE` and hardening), and every `--flag` and
//! `KVNODE_*` variable they pass is one `kvnode --help` lists. The unit is
//! also run through `systemd-analyze verify` where that exists.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy().join(name)).unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// What `kvnode` accepts: its long flags and their variables, from its own
/// `--help`, plus the variables it reads outside its flags.
struct Accepted {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

impl Accepted {
    fn of_kvnode() -> Self {
        let out = Command::new(env!("CARGO_BIN_EXE_kvnode"))
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        let mut flags = BTreeSet::new();
        let mut env = BTreeSet::from(["KVNODE_LOG".to_owned()]);
        for line in help.lines() {
            let line = line.trim_start();
            if let Some(flag) = line.strip_prefix("--") {
                let name: String = flag
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                flags.insert(format!("--{name}"));
            }
            if let Some((_, rest)) = line.split_once("[env: ") {
                env.insert(rest.split('=').next().unwrap().to_owned());
            }
        }
        assert!(flags.contains("--engine-wal-sync"), "{flags:?}");
        assert!(env.contains("KVNODE_SEEDS"), "{env:?}");
        Self { flags, env }
    }

    /// What of `vars` (the variables a file sets for kvnode: those named
    /// `KVNODE_*` count) and of the flags on `commands` (command lines that
    /// run kvnode; the flags after it count) kvnode does not accept, named
    /// with `file`.
    fn unknown(&self, file: &str, vars: &[String], commands: &[String]) -> Vec<String> {
        let mut wrong: Vec<String> = vars
            .iter()
            .chain(commands)
            .flat_map(|text| {
                text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("KVNODE_") && !self.env.contains(*w))
                    .map(|w| format!("{file}: variable {w}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        for command in commands {
            let words: Vec<&str> = command
                .split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
                .collect();
            let Some(at) = words
                .iter()
                .position(|w| *w == "kvnode" || w.ends_with("/kvnode"))
            else {
                continue;
            };
            for word in &words[at + 1..] {
                let flag = word.split('=').next().unwrap_or(word);
                if flag.starts_with("--") && !self.flags.contains(flag) {
                    wrong.push(format!("{file}: flag {flag}"));
                }
            }
        }
        wrong
    }
}

/// The lines of a Dockerfile or unit that are not comments or blank.
fn instructions(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// A YAML string or sequence of strings as one command line.
fn command_line(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_checks_health() {
    let text = read("Dockerfile");
    let instructions = instructions(&text);
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "a build stage and a runtime stage");
    assert!(instructions[froms[0]].contains(" AS build"));
    let runtime = &instructions[*froms.last().unwrap()..];
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("COPY --from=build") && l.contains("kvnode")));
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets a USER");
    let user = user.split(':').next().unwrap();
    assert!(user != "root" && user != "0", "runs as {user}");
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("HEALTHCHECK") || l.starts_with("CMD curl")));
    assert!(text.contains("http://127.0.0.1:7700/health"));
    assert!(runtime.iter().any(|l| l.starts_with("ENTRYPOINT")));
    let vars: Vec<String> = instructions
        .iter()
        .filter(|l| !l.starts_with("RUN "))
        .map(|l| (*l).to_owned())
        .collect();
    let commands: Vec<String> = runtime
        .iter()
        .filter(|l| l.starts_with("ENTRYPOINT") || l.starts_with("CMD"))
        .map(|l| (*l).to_owned())
        .collect();
    let wrong = Accepted::of_kvnode().unknown("Dockerfile", &vars, &commands);
    assert!(wrong.is_empty(), "{wrong:?}");
}

#[test]
fn compose_runs_three_nodes_with_seeds_and_the_secret_file() {
    let text = read("compose.yaml");
    let compose: Value = serde_norway::from_str(&text).unwrap();
    // Merge keys (`<<: *kvnode`) are resolved by compose, not by the
    // parser: look a key up in a service or in what it merges.
    let lookup = |service: &Value, key: &str| -> Option<Value> {
        service
            .get(key)
            .or_else(|| service.get("<<").and_then(|base| base.get(key)))
            .cloned()
    };
    let services = compose["services"].as_mapping().unwrap();
    assert_eq!(services.len(), 3, "three nodes");
    let secret_file = compose["secrets"]["cluster-secret"]["file"]
        .as_str()
        .unwrap();
    assert!(!secret_file.is_empty());
    let mut ids = BTreeSet::new();
    let (mut vars, mut commands) = (Vec::new(), Vec::new());
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let env = service["environment"].as_mapping().unwrap();
        let var = |k: &str| env.get(k).and_then(Value::as_str).map(str::to_owned);
        vars.extend(env.keys().filter_map(Value::as_str).map(str::to_owned));
        for key in ["entrypoint", "command"] {
            commands.extend(lookup(service, key).as_ref().map(command_line));
        }
        ids.insert(var("KVNODE_NODE_ID").unwrap_or_else(|| panic!("{name}: no node id")));
        assert!(var("KVNODE_SEEDS").is_some(), "{name}: no seeds");
        let advertise = var("KVNODE_ADVERTISE").unwrap();
        assert!(
            advertise.parse::<std::net::SocketAddr>().is_ok(),
            "{name}: {advertise}"
        );
        assert_eq!(
            var("KVNODE_CLUSTER_SECRET_FILE").as_deref(),
            Some("/run/secrets/cluster-secret"),
            "{name}"
        );
        let secrets = lookup(service, "secrets").unwrap();
        assert!(
            secrets
                .as_sequence()
                .unwrap()
                .iter()
                .any(|s| s.as_str() == Some("cluster-secret")),
            "{name}"
        );
        assert!(lookup(service, "build").is_some() || lookup(service, "image").is_some());
        let volumes = service["volumes"].as_sequence().unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| v.as_str().is_some_and(|v| v.ends_with(":/var/lib/kvnode"))),
            "{name}: its data on a volume"
        );
    }
    assert_eq!(ids.len(), 3, "distinct node ids");
    let wrong = Accepted::of_kvnode().unknown("compose.yaml", &vars, &commands);
    assert!(wrong.is_empty(), "{wrong:?}");
}

/// Every document of every file under `deploy/k8s/`.
fn k8s_documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy().join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            if !value.is_null() {
                docs.push((path.display().to_string(), value));
            }
        }
    }
    docs
}

#[test]
fn the_kubernetes_manifests_hold_a_headless_service_a_statefulset_and_a_budget() {
    let docs = k8s_documents();
    let of_kind = |kind: &str| -> Vec<&Value> {
        docs.iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    };
    for (file, doc) in &docs {
        assert!(doc["apiVersion"].as_str().is_some(), "{file}: apiVersion");
        assert!(
            doc["metadata"]["name"].as_str().is_some(),
            "{file}: metadata.name"
        );
    }
    let sets = of_kind("StatefulSet");
    assert_eq!(sets.len(), 1);
    let set = sets[0];
    let spec = &set["spec"];
    let labels = spec["template"]["metadata"]["labels"].as_mapping().unwrap();
    let selects = |selector: &Value| {
        selector
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selects(&spec["selector"]["matchLabels"]));

    let headless: Vec<&Value> = of_kind("Service")
        .into_iter()
        .filter(|s| s["spec"]["clusterIP"].as_str() == Some("None"))
        .collect();
    assert_eq!(headless.len(), 1, "one headless Service");
    assert_eq!(spec["serviceName"], headless[0]["metadata"]["name"]);
    assert!(selects(&headless[0]["spec"]["selector"]));

    let claims = spec["volumeClaimTemplates"].as_sequence().unwrap();
    assert!(!claims.is_empty());
    let claim = claims[0]["metadata"]["name"].as_str().unwrap();

    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    let node = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("kvnode"))
        .expect("a kvnode container");
    assert_eq!(
        node["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/ready")
    );
    assert_eq!(
        node["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/health")
    );
    let mounts = node["volumeMounts"].as_sequence().unwrap();
    assert!(mounts.iter().any(|m| m["name"].as_str() == Some(claim)));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_ne!(pod["securityContext"]["runAsUser"].as_u64(), Some(0));
    let env = node["env"].as_sequence().unwrap();
    let secret_path = env
        .iter()
        .find(|e| e["name"].as_str() == Some("KVNODE_CLUSTER_SECRET_FILE"))
        .and_then(|e| e["value"].as_str())
        .expect("the secret comes from a file");
    assert!(
        mounts.iter().any(|m| m["mountPath"]
            .as_str()
            .is_some_and(|p| secret_path.starts_with(p))),
        "{secret_path} is mounted"
    );
    let volumes = pod["volumes"].as_sequence().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"].as_str().is_some()),
        "the secret comes from a Secret"
    );

    let budgets = of_kind("PodDisruptionBudget");
    assert_eq!(budgets.len(), 1);
    assert!(selects(&budgets[0]["spec"]["selector"]["matchLabels"]));
    assert!(
        budgets[0]["spec"]["maxUnavailable"].as_u64() == Some(1)
            || budgets[0]["spec"]["minAvailable"].as_u64().is_some()
    );

    let vars: Vec<String> = env
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    let commands = vec![format!(
        "{} {}",
        command_line(&node["command"]),
        command_line(&node["args"])
    )];
    let wrong = Accepted::of_kvnode().unknown("statefulset", &vars, &commands);
    assert!(wrong.is_empty(), "{wrong:?}");
}

#[test]
fn the_systemd_unit_is_hardened_raises_the_descriptor_limit_and_verifies() {
    let text = read("kvnode.service");
    let settings: Vec<(&str, &str)> = instructions(&text)
        .into_iter()
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let value = |key: &str| settings.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let nofile: u64 = value("LimitNOFILE").expect("LimitNOFILE").parse().unwrap();
    assert!(nofile >= 65536, "{nofile}");
    assert_eq!(value("NoNewPrivileges"), Some("yes"));
    assert_eq!(value("ProtectSystem"), Some("strict"));
    assert_eq!(value("PrivateTmp"), Some("yes"));
    assert_eq!(value("KillSignal"), Some("SIGTERM"));
    assert!(value("User").is_some_and(|u| u != "root"));
    let exec = value("ExecStart").unwrap();
    assert!(exec.starts_with("/usr/local/bin/kvnode"));
    let vars: Vec<String> = settings
        .iter()
        .filter(|(k, _)| *k == "Environment")
        .map(|(_, v)| (*v).to_owned())
        .collect();
    let wrong = Accepted::of_kvnode().unknown("kvnode.service", &vars, &[exec.to_owned()]);
    assert!(wrong.is_empty(), "{wrong:?}");

    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED: systemd-analyze verify (no systemd-analyze on this machine)");
        return;
    };
    // verify checks that ExecStart's binary exists: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("kvnode.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/kvnode", env!("CARGO_BIN_EXE_kvnode")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Off a booted systemd (a container, CI), verify also complains about
    // the host, not the unit: only lines that name the unit count.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("kvnode.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify:\n{stderr}");
    eprintln!(
        "systemd-analyze verify: no complaint about the unit (exit {:?})",
        out.status.code()
    );
}

fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}
