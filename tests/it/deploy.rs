//! The deployment files in `deploy/` say what the code expects: the StatefulSet's seeds
//! are its own pods through the headless Service, probes hit the real health routes, the
//! config the systemd unit reads is a valid kvs config.

use serde::Deserialize;
use serde_json::Value;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kubernetes() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/kvs.yaml")).unwrap();
    yaml_serde::Deserializer::from_str(&text).map(|doc| Value::deserialize(doc).unwrap()).collect()
}

fn env(container: &Value, name: &str) -> String {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("{name} not set"))
        .to_owned()
}

#[test]
fn the_statefulset_seeds_are_its_own_pods_through_a_headless_service() {
    let docs = kubernetes();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}"));
    let (service, set) = (kind("Service"), kind("StatefulSet"));
    kind("PodDisruptionBudget");
    assert_eq!(service["spec"]["clusterIP"], "None", "the Service must be headless");
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    let name = set["metadata"]["name"].as_str().unwrap();
    let service_name = set["spec"]["serviceName"].as_str().unwrap();
    assert_eq!(service["metadata"]["name"], service_name);
    let replicas = set["spec"]["replicas"].as_u64().unwrap();
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    let seeds: Vec<String> =
        (0..replicas).map(|n| format!("{name}-{n}.{service_name}:{port}")).collect();
    assert_eq!(env(container, "KVS_SEEDS"), seeds.join(","));
    assert_eq!(env(container, "KVS_ADVERTISE"), format!("$(POD_NAME).{service_name}:{port}"));
    assert_eq!(env(container, "KVS_LISTEN"), format!("0.0.0.0:{port}"));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health/live");
    let key_file = env(container, "KVS_CLUSTER_KEY_FILE");
    let mounted = container["volumeMounts"].as_array().unwrap().iter().any(|m| {
        key_file.starts_with(m["mountPath"].as_str().unwrap()) && m["name"] == "cluster-key"
    });
    assert!(mounted, "the cluster key file is not on the mounted secret");
}

#[test]
fn the_systemd_config_example_is_a_valid_config() {
    let text = std::fs::read_to_string(root().join("deploy/kvs.yaml")).unwrap();
    // The key file does not exist here: point it at a real one for the check.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    std::fs::write(&key, kvs::config::generate_key()).unwrap();
    let text = text.replace("/etc/kvs/cluster.key", key.to_str().unwrap());
    let config = kvs::config::Config::from_yaml(&text).unwrap();
    assert!(config.listen.ip().is_unspecified());
    assert_eq!(config.seeds.len(), 3);
    assert!(config.cluster_key.is_some());
    let unit = std::fs::read_to_string(root().join("deploy/kvs.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/kvs serve --config /etc/kvs/kvs.yaml"));
    assert!(unit.contains("ReadWritePaths=/var/lib/kvs"));
    assert!(text.contains("data_dir: /var/lib/kvs/data"));
}
