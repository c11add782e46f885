//! The Kubernetes manifests in `deploy/k8s`, in each of their variants as kustomize assembles
//! them: the cluster (`deploy/k8s`: three replicas on PostgreSQL and NATS), its development
//! form with throw-away PostgreSQL and NATS (`dev`) and the single-node form on SQLite
//! (`single-node`). Checked offline with `kubernetes-validate`, for the properties a rollout
//! depends on (replicas, strategy, disruption budget, selectors, the spec's probes), and with
//! the real runtime: the variables the manifests set are ones it reads, and replicas started
//! with the cluster's environment share one database and NATS.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::deploy::{deploy, kustomize, named, one, read, run, selects, spawn_like_the_image};
use common::nats::NatsServer;
use common::postgres::{Route, database};
use common::tools::{Tool, have};
use common::{Client, assert_gapless};
use serde_json::{Value, json};

const CLUSTER: &str = "k8s";
const DEV: &str = "k8s/dev";
const SINGLE_NODE: &str = "k8s/single-node";
const VARIANTS: [&str; 3] = [CLUSTER, DEV, SINGLE_NODE];

const WAIT: Duration = Duration::from_secs(60);

/// The spec's Kubernetes example (`monitoring-README.md`, "Deployment" → "Kubernetes
/// (Production)"), verbatim.
const SPEC_EXAMPLE: &str = r#"
# Example Deployment with health checks
apiVersion: apps/v1
kind: Deployment
metadata:
  name: agentnexus-backend
spec:
  replicas: 3
  template:
    spec:
      containers:
      - name: backend
        image: agentnexus-backend:latest
        ports:
        - containerPort: 3001
        livenessProbe:
          httpGet:
            path: /health/live
            port: 3001
          initialDelaySeconds: 30
          periodSeconds: 10
        readinessProbe:
          httpGet:
            path: /health/ready
            port: 3001
          initialDelaySeconds: 10
          periodSeconds: 5
        resources:
          requests:
            memory: "256Mi"
            cpu: "250m"
          limits:
            memory: "1Gi"
            cpu: "1000m"
"#;

/// Every file under deploy/k8s that is a manifest (not a kustomization).
fn manifest_files(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            manifest_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml")
            && path.file_name().unwrap() != "kustomization.yaml"
        {
            let relative = path.strip_prefix(deploy("")).unwrap();
            out.insert(relative.display().to_string());
        }
    }
}

#[test]
fn every_kubernetes_manifest_is_in_a_variant_and_validates_offline() {
    if !have(Tool::PyYaml) {
        return;
    }
    let mut files = BTreeSet::new();
    manifest_files(&deploy("k8s"), &mut files);
    let listed: BTreeSet<String> = VARIANTS
        .iter()
        .flat_map(|v| kustomize(v))
        .map(|(file, _)| file)
        .collect();
    assert_eq!(
        files, listed,
        "manifests that no variant applies, or missing ones"
    );
    if !have(Tool::KubernetesValidate) {
        return;
    }
    let paths: Vec<String> = files
        .iter()
        .map(|f| deploy(f).display().to_string())
        .collect();
    let mut args = vec!["--strict", "-k", "1.30.0"];
    args.extend(paths.iter().map(String::as_str));
    let (ok, out) = run("kubernetes-validate", &args, None);
    assert!(ok, "kubernetes-validate: {out}");
    // The built-in kinds were validated, not skipped; only the operator's CRDs lack a schema.
    for kind in [
        "configmap",
        "deployment",
        "service",
        "persistentvolumeclaim",
        "namespace",
        "poddisruptionbudget",
        "secret",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}/")),
            "{kind}: {out}"
        );
    }
    for line in out.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            line.contains("monitoring.coreos.com/v1"),
            "unexpected warning: {line}"
        );
    }
}

/// Whether `ours` holds everything `spec` says: each key with the same value (lists element by
/// element), extra keys allowed.
fn holds(ours: &Value, spec: &Value, at: &str) {
    match spec {
        Value::Object(map) => {
            for (k, v) in map {
                holds(&ours[k], v, &format!("{at}.{k}"));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                holds(&ours[i], v, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(ours, spec, "{at}"),
    }
}

#[test]
fn the_spec_example_holds_for_the_cluster_and_its_pod_for_every_variant() {
    if !have(Tool::PyYaml) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.yaml");
    std::fs::write(&path, SPEC_EXAMPLE).unwrap();
    let mut spec = common::deploy::yaml_docs(&path).remove(0);
    // Ours is named agentnexus and runs the image agentnexus:<version>; all else as written.
    spec["metadata"].as_object_mut().unwrap().remove("name");
    spec["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("image");
    for variant in VARIANTS {
        let deployment = named(&kustomize(variant), "Deployment", "agentnexus");
        let mut wanted = spec.clone();
        if variant == SINGLE_NODE {
            // One writer to one SQLite file.
            assert_eq!(deployment["spec"]["replicas"], 1);
            wanted["spec"].as_object_mut().unwrap().remove("replicas");
        }
        holds(&deployment, &wanted, variant);
        let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap();
        assert_eq!(image, "agentnexus:0.1.0", "{variant}");
    }
}

fn pod_labels(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["metadata"]["labels"]
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// The container's environment by name: a value, or where it comes from.
fn env(deployment: &Value) -> BTreeMap<String, Value> {
    container(deployment)["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let from = e.get("value").or(e.get("valueFrom")).unwrap().clone();
            (e["name"].as_str().unwrap().to_owned(), from)
        })
        .collect()
}

#[test]
fn the_cluster_runs_three_replicas_rolling_one_at_a_time_within_a_disruption_budget() {
    if !have(Tool::PyYaml) {
        return;
    }
    for variant in [CLUSTER, DEV] {
        let docs = kustomize(variant);
        let deployment = named(&docs, "Deployment", "agentnexus");
        let labels = pod_labels(&deployment);
        assert_eq!(deployment["spec"]["replicas"], 3, "{variant}");
        assert!(selects(&deployment["spec"]["selector"], labels));
        // A new pod first, an old one only once it is ready: never fewer than three serving.
        assert_eq!(
            deployment["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
            "{variant}"
        );
        // Drains take one replica at a time, and the budget covers exactly the runtime's pods.
        let budget = one(&docs, "PodDisruptionBudget");
        assert_eq!(budget["spec"]["minAvailable"], 2, "{variant}");
        assert!(selects(&budget["spec"]["selector"], labels), "{variant}");
        assert_eq!(
            budget["metadata"]["namespace"],
            deployment["metadata"]["namespace"]
        );
        // Replicas spread over nodes where there are several, schedulable where there is one.
        let spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
            .as_array()
            .unwrap();
        assert!(
            spread
                .iter()
                .any(|c| c["topologyKey"] == "kubernetes.io/hostname")
        );
        for constraint in spread {
            assert!(
                selects(&constraint["labelSelector"], labels),
                "{constraint}"
            );
            assert_eq!(constraint["whenUnsatisfiable"], "ScheduleAnyway");
        }
        // The shared store and bus from the environment; the pod's name is the replica's.
        let env = env(&deployment);
        assert_eq!(
            env["AGENTNEXUS_DATABASE_URL"],
            json!({"secretKeyRef": {"name": "agentnexus-database", "key": "url"}})
        );
        assert_eq!(env["AGENTNEXUS_NATS_URL"], "nats://nats:4222");
        assert_eq!(
            env["AGENTNEXUS_REPLICA_ID"],
            json!({"fieldRef": {"fieldPath": "metadata.name"}})
        );
        // Nothing on the pod outlives it: no volume claim, the data directory is scratch.
        assert!(
            docs.iter()
                .all(|(_, d)| d["kind"] != "PersistentVolumeClaim"
                    || d["metadata"]["labels"]["app.kubernetes.io/name"] != "agentnexus")
        );
        let volumes = deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap();
        let data = volumes.iter().find(|v| v["name"] == "data").unwrap();
        assert!(data.get("emptyDir").is_some(), "{data}");
    }
}

#[test]
fn the_single_node_variant_keeps_one_replica_on_its_volume() {
    if !have(Tool::PyYaml) {
        return;
    }
    let single = kustomize(SINGLE_NODE);
    let deployment = one(&single, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    // Two pods must never share the SQLite file, not even during a rollout.
    assert_eq!(deployment["spec"]["strategy"], json!({"type": "Recreate"}));
    assert!(
        single
            .iter()
            .all(|(_, d)| d["kind"] != "PodDisruptionBudget")
    );
    let env = env(&deployment);
    assert!(
        !env.keys()
            .any(|k| k == "AGENTNEXUS_DATABASE_URL" || k == "AGENTNEXUS_NATS_URL")
    );
    let claim = one(&single, "PersistentVolumeClaim");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let data = volumes.iter().find(|v| v["name"] == "data").unwrap();
    assert_eq!(
        data["persistentVolumeClaim"]["claimName"],
        claim["metadata"]["name"]
    );
    // The same container as the cluster's but for the shared store: probes, ports, resources,
    // security and mounts alike.
    let cluster = named(&kustomize(CLUSTER), "Deployment", "agentnexus");
    for key in [
        "image",
        "args",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
        "volumeMounts",
    ] {
        assert_eq!(
            container(&deployment)[key],
            container(&cluster)[key],
            "{key}"
        );
    }
    for key in ["securityContext", "terminationGracePeriodSeconds"] {
        assert_eq!(
            deployment["spec"]["template"]["spec"][key], cluster["spec"]["template"]["spec"][key],
            "{key}"
        );
    }
}

/// `scheme://user:password@host:port/database?…` in its parts.
fn url_parts(url: &str) -> (String, String, String, String, u16) {
    let (_, rest) = url.split_once("://").unwrap();
    let (auth, rest) = rest.split_once('@').unwrap_or(("", rest));
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let (host_port, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = host_port.split_once(':').unwrap();
    let database = path.split('?').next().unwrap();
    (
        user.into(),
        password.into(),
        host.into(),
        database.into(),
        port.parse().unwrap(),
    )
}

#[test]
fn the_dev_variant_runs_postgres_and_nats_where_the_runtime_looks_for_them() {
    if !have(Tool::PyYaml) {
        return;
    }
    let docs = kustomize(DEV);
    for (file, _) in docs.iter().filter(|(f, _)| f.starts_with("k8s/dev/")) {
        assert!(read(file).contains("NOT FOR PRODUCTION"), "{file}");
    }
    let secret = |name: &str, key: &str| -> String {
        named(&docs, "Secret", name)["stringData"][key]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let runtime = named(&docs, "Deployment", "agentnexus");
    let service_port = |name: &str| {
        let service = named(&docs, "Service", name);
        let port = service["spec"]["ports"][0]["port"].as_u64().unwrap() as u16;
        (service, port)
    };

    // The database URL the runtime gets names the Service `postgres`, and the user, password
    // and database the PostgreSQL pod creates.
    let (user, password, host, db, port) = url_parts(&secret("agentnexus-database", "url"));
    let postgres = named(&docs, "Deployment", "postgres");
    let (service, service_port_number) = service_port(&host);
    assert_eq!(port, service_port_number);
    assert!(selects(&service["spec"]["selector"], pod_labels(&postgres)));
    let pg_env = env(&postgres);
    assert_eq!(pg_env["POSTGRES_USER"], user.as_str());
    assert_eq!(pg_env["POSTGRES_DB"], db.as_str());
    let from = &pg_env["POSTGRES_PASSWORD"]["secretKeyRef"];
    let pg_password = secret(
        from["name"].as_str().unwrap(),
        from["key"].as_str().unwrap(),
    );
    assert_eq!(pg_password, password);
    assert_eq!(
        container(&postgres)["ports"][0]["containerPort"].as_u64(),
        Some(port.into())
    );

    // The NATS URL names the Service `nats`, in front of the NATS pod's client port.
    let nats_url = env(&runtime)["AGENTNEXUS_NATS_URL"]
        .as_str()
        .unwrap()
        .to_owned();
    let (host, port) = nats_url
        .trim_start_matches("nats://")
        .split_once(':')
        .unwrap();
    let nats = named(&docs, "Deployment", "nats");
    let (service, service_port_number) = service_port(host);
    assert_eq!(port.parse::<u16>().unwrap(), service_port_number);
    assert!(selects(&service["spec"]["selector"], pod_labels(&nats)));

    // The API key Secret holds the file the ConfigMap names.
    let config = one(&docs, "ConfigMap")["data"]["agentnexus.toml"].clone();
    let key_file = config
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("api_keys_file = \""))
        .unwrap()
        .trim_end_matches('"')
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(secret("agentnexus-api-keys", &key_file).contains("[[api_keys]]"));

    // Neither helper's pods are taken for the runtime's by its Service, budget or monitor.
    let runtime_service = named(&docs, "Service", "agentnexus");
    let budget = one(&docs, "PodDisruptionBudget");
    for helper in [&postgres, &nats] {
        let labels = pod_labels(helper);
        assert!(!selects(&runtime_service["spec"]["selector"], labels));
        assert!(!selects(&budget["spec"]["selector"], labels));
        let image = container(helper)["image"].as_str().unwrap();
        let (_, tag) = image.rsplit_once(':').expect("a tag");
        assert!(
            tag != "latest" && tag.starts_with(|c: char| c.is_ascii_digit()),
            "{image}"
        );
    }
    let monitor = one(&docs, "ServiceMonitor");
    for name in ["postgres", "nats"] {
        let labels = &named(&docs, "Service", name)["metadata"]["labels"];
        assert!(!selects(&monitor["spec"]["selector"], labels), "{name}");
    }
}

/// Runs the runtime with the ConfigMap's config and `name` set to a value it must refuse:
/// a variable the runtime reads stops it at once with a configuration error (exit code 2);
/// one it does not read would leave it running.
fn refuses_bad_value_of(config: &Path, name: &str) -> Result<(), String> {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentnexus"))
        .arg("serve")
        .env("AGENTNEXUS_CONFIG", config)
        .env("AGENTNEXUS_BIND", "127.0.0.1:0")
        .env("AGENTNEXUS_DATA_DIR", data.path())
        .env(name, "::not a valid value::")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return match status.code() {
                Some(2) => Ok(()),
                other => Err(format!("{name}: exit {other:?}")),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{name} is not a variable the runtime reads"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_runtime_variable_the_manifests_set_is_one_the_runtime_reads() {
    if !have(Tool::PyYaml) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentnexus.toml");
    let configmap = one(&kustomize(CLUSTER), "ConfigMap");
    let text = configmap["data"]["agentnexus.toml"].as_str().unwrap();
    // The key file is the Secret's: absent here, so the file's line goes.
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("api_keys_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, text).unwrap();
    let mut names = BTreeSet::new();
    for variant in VARIANTS {
        names.extend(env(&named(&kustomize(variant), "Deployment", "agentnexus")).into_keys());
    }
    let ours: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("AGENTNEXUS_"))
        .collect();
    assert!(ours.len() >= 4, "{ours:?}");
    for name in ours {
        refuses_bad_value_of(&config, name).unwrap();
    }
}

/// The cluster's pods for real: each replica started as the image starts it, with the
/// ConfigMap's config and the Deployment's environment resolved as Kubernetes would (the
/// database URL from its Secret, the NATS Service's address, the pod's name), against a real
/// PostgreSQL and NATS. An execution submitted to one pod is run by one of them, named by its
/// pod, and another pod follows it live over NATS to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_share_one_database_and_nats_from_the_deployments_environment() {
    if !have(Tool::PyYaml) {
        return;
    }
    let Some(database_url) = database(Route::Direct) else {
        return;
    };
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let docs = kustomize(CLUSTER);
    let deployment = named(&docs, "Deployment", "agentnexus");
    let configmap = one(&docs, "ConfigMap");
    // The example agents are the repository's (the image has them under /opt).
    let agents = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agents/");
    let config = configmap["data"]["agentnexus.toml"]
        .as_str()
        .unwrap()
        .replace("/opt/agentnexus/agents/", agents.to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("agentnexus.toml");
    std::fs::write(&config_path, config).unwrap();
    let key = "k8s-cluster-test-admin-key-0123456789";
    // The Secret's key file, where the test can put it (AGENTNEXUS_API_KEYS_FILE moves it).
    let keys = dir.path().join("api-keys.toml");
    std::fs::write(
        &keys,
        format!("[[api_keys]]\nkey = \"{key}\"\nuser = \"ops\"\nadmin = true\n"),
    )
    .unwrap();

    let pods = ["agentnexus-6d9c7b5f4d-k2x8p", "agentnexus-6d9c7b5f4d-q7m4z"];
    let mut replicas = Vec::new();
    for pod in pods {
        let mut resolved: Vec<(String, String)> = Vec::new();
        for (name, from) in env(&deployment) {
            let value = if let Some(value) = from.as_str() {
                // The Service `nats` of the namespace is this test's server.
                value.replace("nats://nats:4222", &nats.url())
            } else if from["secretKeyRef"]["name"] == "agentnexus-database" {
                database_url.clone()
            } else if from["fieldRef"]["fieldPath"] == "metadata.name" {
                pod.to_owned()
            } else {
                panic!("{name}: cannot resolve {from}");
            };
            resolved.push((name, value));
        }
        resolved.retain(|(name, _)| name != "AGENTNEXUS_CONFIG");
        resolved.push((
            "AGENTNEXUS_API_KEYS_FILE".into(),
            keys.display().to_string(),
        ));
        let data = dir.path().join(pod);
        std::fs::create_dir_all(&data).unwrap();
        let env: Vec<(&str, &str)> = resolved
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        replicas.push(spawn_like_the_image(&config_path, &data, &env));
    }
    let client = |i: usize| Client::new(&replicas[i].url).with_token(key);

    // Both pods become ready with NATS connected (readiness says degraded without it).
    for replica in &replicas {
        let deadline = Instant::now() + WAIT;
        loop {
            let ready: Value = reqwest::get(format!("{}/health/ready", replica.url))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if ready["status"] == "healthy" {
                break;
            }
            assert!(Instant::now() < deadline, "never healthy: {ready}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Submitted to the first pod, visible on the second, run by one of them under its name.
    let id = client(0).submit("counter", json!({"count": 20})).await;
    let bearer = format!("Bearer {key}");
    let mut ws = common::ws::Ws::try_connect_to(&replicas[1].url, &[("authorization", &bearer)])
        .await
        .unwrap();
    ws.subscribe(&id, Some(0)).await;
    let events = ws.events_until_end(&id).await;
    assert_gapless(&events);
    let done = client(1).wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(
        pods.contains(&done["replicaId"].as_str().unwrap()),
        "{done}"
    );
    let logs = common::log_lines(&events);
    let ticks = logs.iter().filter(|l| l.starts_with("tick ")).count();
    assert_eq!(ticks, 20, "{logs:?}");
    let metrics = common::scrape(&replicas[1].url).await;
    assert!(
        metrics.lines().any(|l| l == "agentnexus_nats_connected 1"),
        "the second pod is not on NATS"
    );
}
