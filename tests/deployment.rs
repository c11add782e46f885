//! The deployment files in `deploy/` checked with the real tools: `docker-compose config`,
//! promtool on the PrometheusRule, the shipped runtime configs, and the image's way of starting the runtime
//! (keys from the environment or a Secret file) and its health check script, run for real.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};

use common::Client;
use common::deploy::{
    compose_mount_source, deploy, kustomize, one, read, run, spawn_like_the_image, status_of,
    toml_port, yaml, yaml_docs,
};
use common::tools::{Tool, have, on_path};
use reqwest::StatusCode;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// docker-compose

/// `docker-compose`, or `docker compose`, with the arguments that precede its own; `None`
/// (after `skip`) without either.
fn compose() -> Option<(&'static str, Vec<&'static str>)> {
    if on_path("docker-compose") {
        Some(("docker-compose", vec![]))
    } else if on_path("docker") && run("docker", &["compose", "version"], None).0 {
        Some(("docker", vec!["compose"]))
    } else {
        common::skip(
            "neither docker-compose nor `docker compose` is installed (apt-get install docker-compose; scripts/test installs it)",
        );
        None
    }
}

/// `compose … config` of the compose file with `extra` arguments first: whether it passed, and
/// its output (the resolved file).
fn compose_config(extra: &[&str], quiet: bool) -> Option<(bool, String)> {
    let (program, mut args) = compose()?;
    args.extend(extra);
    args.extend(["-f", "docker-compose.yml", "config"]);
    if quiet {
        args.push("--quiet");
    }
    Some(run(program, &args, Some(&deploy(""))))
}

#[test]
fn docker_compose_accepts_the_compose_file() {
    for profile in [&[][..], &["--profile", "cluster"]] {
        let Some((ok, out)) = compose_config(profile, true) else {
            return;
        };
        assert!(ok, "config {profile:?}: {out}");
    }
}

/// The compose file with the cluster profile, as compose resolves it (variables substituted,
/// `<<` merged), or `None` (after `skip`) without compose or PyYAML.
fn cluster_compose() -> Option<Value> {
    if !have(Tool::PyYaml) {
        return None;
    }
    let (program, mut args) = compose()?;
    args.extend(["--profile", "cluster", "-f", "docker-compose.yml", "config"]);
    let out = Command::new(program)
        .args(&args)
        .current_dir(deploy(""))
        // The defaults the file gives, not whatever this machine's environment says.
        .env_remove("POSTGRES_PASSWORD")
        .env_remove("AGENTNEXUS_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolved.yml");
    std::fs::write(&path, &out.stdout).unwrap();
    Some(yaml_docs(&path).remove(0))
}

const REPLICAS: [&str; 3] = ["agentnexus-1", "agentnexus-2", "agentnexus-3"];

#[test]
fn the_cluster_profile_runs_three_replicas_on_one_database_and_nats_behind_the_proxy() {
    let Some(compose) = cluster_compose() else {
        return;
    };
    let services = compose["services"].as_object().unwrap();
    // Without the profile, the single runtime on SQLite and its monitoring, as before.
    let default: BTreeSet<&str> = services
        .iter()
        .filter(|(_, s)| s.get("profiles").is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        default,
        BTreeSet::from(["agentnexus", "prometheus", "alertmanager", "grafana"])
    );
    for name in REPLICAS.iter().chain(&["postgres", "nats", "proxy"]) {
        assert_eq!(services[*name]["profiles"], json!(["cluster"]), "{name}");
        let image = services[*name]["image"].as_str().unwrap();
        let (_, tag) = image.rsplit_once(':').expect("a tag");
        assert!(
            tag != "latest" && tag.starts_with(|c: char| c.is_ascii_digit()),
            "{name}: {image} is not pinned"
        );
    }
    // One database URL and one NATS URL for all three, each its own replica id.
    let env = |name: &str, key: &str| services[name]["environment"][key].clone();
    let mut ids = BTreeSet::new();
    for name in REPLICAS {
        for key in [
            "AGENTNEXUS_DATABASE_URL",
            "AGENTNEXUS_NATS_URL",
            "AGENTNEXUS_API_KEYS",
        ] {
            assert_eq!(env(name, key), env(REPLICAS[0], key), "{name}: {key}");
        }
        ids.insert(
            env(name, "AGENTNEXUS_REPLICA_ID")
                .as_str()
                .unwrap()
                .to_owned(),
        );
        assert_eq!(
            services[name]["depends_on"]["postgres"]["condition"],
            "service_healthy"
        );
    }
    assert_eq!(ids.len(), 3, "{ids:?}");
    // The URL is the postgres service's database, user and password.
    let url = env(REPLICAS[0], "AGENTNEXUS_DATABASE_URL");
    let pg = &services["postgres"]["environment"];
    let expected = format!(
        "postgres://{}:{}@postgres:5432/{}?sslmode=disable",
        pg["POSTGRES_USER"].as_str().unwrap(),
        pg["POSTGRES_PASSWORD"].as_str().unwrap(),
        pg["POSTGRES_DB"].as_str().unwrap()
    );
    assert_eq!(url, expected);
    assert_eq!(env(REPLICAS[0], "AGENTNEXUS_NATS_URL"), "nats://nats:4222");
    assert!(
        services["nats"]["command"]
            .as_array()
            .unwrap()
            .windows(2)
            .any(|w| w[0] == "--port" && w[1] == "4222")
    );

    // The proxy: published, routing to the three replicas' port, passing WebSocket upgrades.
    // (Compose v1 writes ports and mounts in the short form, v2 in the long one.)
    let proxy = &services["proxy"];
    let published = match &proxy["ports"][0] {
        Value::String(short) => short.split(':').next().unwrap().to_owned(),
        long => long["published"].to_string().trim_matches('"').to_owned(),
    };
    assert_eq!(published, "8080", "{proxy}");
    let source = match &proxy["volumes"][0] {
        Value::String(short) => short.split(':').next().unwrap().to_owned(),
        long => long["source"].as_str().unwrap().to_owned(),
    };
    assert!(source.ends_with("deploy/nginx/cluster.conf"), "{source}");
    let conf = read("nginx/cluster.conf");
    let upstream: BTreeSet<&str> = conf
        .lines()
        .skip_while(|l| l.trim() != "upstream agentnexus {")
        .take_while(|l| l.trim() != "}")
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|s| s.trim_end_matches(';'))
        .collect();
    let port = toml_port(&read("agentnexus.toml"));
    let wanted: BTreeSet<String> = REPLICAS.iter().map(|r| format!("{r}:{port}")).collect();
    assert_eq!(
        upstream,
        wanted.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    let directives: BTreeSet<String> = conf
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    for wanted in [
        "proxy_pass http://agentnexus;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "default upgrade;",
    ] {
        assert!(
            directives.contains(wanted),
            "nginx/cluster.conf lacks {wanted}"
        );
    }
}

#[test]
fn compose_pins_images_uses_named_volumes_and_the_spec_ports() {
    if !have(Tool::PyYaml) {
        return;
    }
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().unwrap();
    for name in ["agentnexus", "prometheus", "grafana", "alertmanager"] {
        let image = services[name]["image"].as_str().unwrap();
        let (_, tag) = image.rsplit_once(':').expect("a tag");
        assert!(
            tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{name}: {image} is not pinned"
        );
    }
    let ports = |s: &str| services[s]["ports"].clone();
    assert_eq!(ports("agentnexus"), json!(["3001:3001"]));
    assert_eq!(ports("grafana"), json!(["3000:3000"]));
    assert_eq!(ports("prometheus"), json!(["9090:9090"]));
    // Named volumes for every service's data, the runtime's data directory among them.
    let named: BTreeSet<&str> = compose["volumes"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for (service, target) in [
        ("agentnexus", "/var/lib/agentnexus"),
        ("prometheus", "/prometheus"),
        ("grafana", "/var/lib/grafana"),
        ("alertmanager", "/alertmanager"),
    ] {
        let mounted = services[service]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .any(|v| {
                let mut parts = v.split(':');
                let source = parts.next().unwrap();
                named.contains(source) && parts.next() == Some(target)
            });
        assert!(mounted, "{service}: no named volume on {target}");
    }
    // The runtime's data directory is the one the image and config use.
    let config = read("agentnexus.toml");
    assert!(config.contains("data_dir = \"/var/lib/agentnexus\""));
    // Grafana credentials from the environment, defaulting to the spec's admin/admin.
    let env = &services["grafana"]["environment"];
    assert_eq!(
        env["GF_SECURITY_ADMIN_USER"],
        "${GRAFANA_ADMIN_USER:-admin}"
    );
    assert_eq!(
        env["GF_SECURITY_ADMIN_PASSWORD"],
        "${GRAFANA_ADMIN_PASSWORD:-admin}"
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes (the single-node variant; tests/deployment_k8s.rs checks every variant), the image
// and its config, against the real runtime

#[test]
fn the_prometheus_rule_carries_the_same_rules_and_promtool_accepts_it() {
    if !(have(Tool::PyYaml) && have(Tool::Promtool)) {
        return;
    }
    let rule = one(&kustomize("k8s"), "PrometheusRule");
    let alerts = yaml("prometheus/alerts.yml");
    let sync = "k8s/common/prometheusrule.yaml differs from prometheus/alerts.yml: run deploy/k8s/sync-rules.sh";
    let (ours, theirs) = (&rule["spec"]["groups"], &alerts["groups"]);
    let names = |g: &Value| -> Vec<Value> {
        g.as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].clone())
            .collect()
    };
    assert_eq!(names(ours), names(theirs), "{sync}");
    for (a, b) in ours
        .as_array()
        .unwrap()
        .iter()
        .zip(theirs.as_array().unwrap())
    {
        assert_eq!(
            a["rules"].as_array().map(Vec::len),
            b["rules"].as_array().map(Vec::len),
            "{sync}"
        );
        for (x, y) in a["rules"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["rules"].as_array().unwrap())
        {
            assert_eq!(x, y, "{sync} (rule {})", y["alert"]);
        }
    }
    assert_eq!(ours, theirs, "{sync}");
    // And it is a rules file promtool accepts (JSON is YAML).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yml");
    std::fs::write(
        &path,
        json!({ "groups": rule["spec"]["groups"] }).to_string(),
    )
    .unwrap();
    let (ok, out) = run(
        "promtool",
        &["check", "rules", path.to_str().unwrap()],
        None,
    );
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_probes_ports_and_config_work_against_the_real_runtime() {
    if !have(Tool::PyYaml) {
        return;
    }
    // The single-node variant, whose runtime needs nothing else (the cluster's pod template
    // has the same container but for the shared store: the_replicas_share_...).
    let docs = kustomize("k8s/single-node");
    let k8s = |kind: &str| one(&docs, kind);
    let deployment = k8s("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let config_map = k8s("ConfigMap");
    let config = config_map["data"]["agentnexus.toml"].as_str().unwrap();
    let service = k8s("Service");
    let monitor = k8s("ServiceMonitor");

    // The spec's probes and resources.
    let port = container["ports"][0]["containerPort"].as_u64().unwrap() as u16;
    assert_eq!(port, 3001);
    assert_eq!(toml_port(config), port, "the ConfigMap binds another port");
    let live = &container["livenessProbe"];
    let ready = &container["readinessProbe"];
    assert_eq!(live["httpGet"]["path"], "/health/live");
    assert_eq!(ready["httpGet"]["path"], "/health/ready");
    assert_eq!(
        (
            live["initialDelaySeconds"].as_u64(),
            live["periodSeconds"].as_u64()
        ),
        (Some(30), Some(10))
    );
    assert_eq!(
        (
            ready["initialDelaySeconds"].as_u64(),
            ready["periodSeconds"].as_u64()
        ),
        (Some(10), Some(5))
    );
    for probe in [live, ready] {
        assert_eq!(probe["httpGet"]["port"].as_u64(), Some(port as u64));
    }
    assert_eq!(
        container["resources"],
        json!({"requests": {"memory": "256Mi", "cpu": "250m"}, "limits": {"memory": "1Gi", "cpu": "1000m"}})
    );
    // Service → container port by name; ServiceMonitor → Service port by name, the same path.
    let port_name = container["ports"][0]["name"].as_str().unwrap();
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port_name);
    let service_port_name = service["spec"]["ports"][0]["name"].as_str().unwrap();
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service_port_name);
    assert_eq!(endpoint["interval"], "10s");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for selector in [
        &service["spec"]["selector"],
        &monitor["spec"]["selector"]["matchLabels"],
    ] {
        for (k, v) in selector.as_object().unwrap() {
            let labels = if selector == &service["spec"]["selector"] {
                pod_labels
            } else {
                &service["metadata"]["labels"]
            };
            assert_eq!(&labels[k], v, "selector {k}");
        }
    }
    // Kubernetes' grace outlasts the runtime's own shutdown grace.
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let runtime_grace: u64 = config
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace_secs = "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(grace > runtime_grace);
    // The config the runtime reads and the key file it names are mounts.
    let env: BTreeMap<&str, &str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    let mounts: BTreeSet<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        env["AGENTNEXUS_CONFIG"],
        "/etc/agentnexus/config/agentnexus.toml"
    );
    assert!(mounts.contains("/etc/agentnexus/config"));
    assert!(mounts.contains("/tmp") && mounts.contains("/var/lib/agentnexus"));
    let key_file = config
        .lines()
        .find_map(|l| l.strip_prefix("api_keys_file = \""))
        .expect("the ConfigMap names the key file")
        .trim_end_matches('"');
    let (key_dir, key_name) = key_file.rsplit_once('/').unwrap();
    let secret_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == key_dir)
        .expect("the key file's directory is a mount");
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == secret_mount["name"])
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "agentnexus-api-keys");
    assert!(
        read("../docs/monitoring.md").contains(&format!("--from-file={key_name}")),
        "the guide creates the Secret with the key {key_name}"
    );

    // Now the ConfigMap's config, with keys in a Secret-like file at the path it names (moved
    // here by AGENTNEXUS_API_KEYS_FILE, which overrides it), run by the real binary as the image
    // runs it; the probes and the scrape path answer as the manifests expect.
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("agentnexus.toml");
    std::fs::write(&config_path, config).unwrap();
    let secret_file = dir.path().join(key_name);
    let key = "k8s-test-admin-key-0123456789";
    let hashed = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    };
    std::fs::write(
        &secret_file,
        format!("[[api_keys]]\nkey = \"sha256:{hashed}\"\nuser = \"ops\"\nadmin = true\n"),
    )
    .unwrap();
    let runtime = spawn_like_the_image(
        &config_path,
        dir.path(),
        &[("AGENTNEXUS_API_KEYS_FILE", secret_file.to_str().unwrap())],
    );
    for probe in [live, ready] {
        let path = probe["httpGet"]["path"].as_str().unwrap();
        assert_eq!(
            status_of(&format!("{}{path}", runtime.url), None).await,
            StatusCode::OK,
            "{path}"
        );
    }
    // Docker is disabled in the ConfigMap: readiness is healthy, not degraded.
    let ready_body: Value = reqwest::get(format!("{}/health/ready", runtime.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready_body["status"], "healthy", "{ready_body}");
    let metrics = reqwest::get(format!(
        "{}{}",
        runtime.url,
        endpoint["path"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains("agentnexus_executions_total{"),
        "no agent series"
    );
    // The API needs the key from the Secret.
    let agents = format!("{}/api/agents", runtime.url);
    assert_eq!(status_of(&agents, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(&agents, Some(key)).await, StatusCode::OK);

    // The image's health check script, as the Dockerfile and compose run it.
    let port = runtime.addr.port();
    let check = |path: &str| {
        Command::new("bash")
            .arg(deploy("healthcheck.sh"))
            .arg(path)
            .env("AGENTNEXUS_PORT", port.to_string())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(check("/health/live"));
    assert!(check("/health/ready"));
    assert!(!check("/no/such/path"), "a 404 must count as unhealthy");
    drop(runtime);
    assert!(
        !check("/health/live"),
        "nothing listening must count as unhealthy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_config_and_image_run_the_runtime_with_the_admin_key_from_env() {
    if !have(Tool::PyYaml) {
        return;
    }
    let dockerfile = read("Dockerfile");
    let config = read("agentnexus.toml");
    let compose = yaml("docker-compose.yml");
    let port = toml_port(&config);
    assert!(dockerfile.contains(&format!("EXPOSE {port}")));
    assert!(dockerfile.contains("AGENTNEXUS_PORT=3001") && port == 3001);
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"/health/live\""));
    assert!(
        dockerfile.contains("\nUSER agentnexus"),
        "the image must not run as root"
    );
    assert!(dockerfile.matches("\nFROM ").count() >= 2, "multi-stage");
    // Everything the image copies from the build context (the repository root) exists.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(
                root.join(source).exists(),
                "Dockerfile copies a missing {source}"
            );
        }
    }
    assert_eq!(
        compose_mount_source(&compose, "agentnexus", "/etc/agentnexus/agentnexus.toml").as_deref(),
        Some("./agentnexus.toml")
    );
    // The image runs the binary itself (no script assembling a config), reading the config
    // the compose file mounts.
    assert!(
        dockerfile
            .contains("ENTRYPOINT [\"/usr/bin/tini\", \"--\", \"/usr/local/bin/agentnexus\"]")
    );
    assert!(dockerfile.contains("AGENTNEXUS_CONFIG=/etc/agentnexus/agentnexus.toml"));

    // The keys compose passes, with compose's substitution of AGENTNEXUS_ADMIN_KEY.
    let key = "compose-test-admin-key-0123456789";
    let keys = compose["services"]["agentnexus"]["environment"]["AGENTNEXUS_API_KEYS"]
        .as_str()
        .expect("compose passes AGENTNEXUS_API_KEYS");
    let default = "${AGENTNEXUS_ADMIN_KEY:-local-dev-admin-key-change-me}";
    assert!(keys.contains(default), "{keys}");
    let keys = keys.replace(default, key);
    let dir = tempfile::tempdir().unwrap();
    let runtime = spawn_like_the_image(
        &deploy("agentnexus.toml"),
        dir.path(),
        &[("AGENTNEXUS_API_KEYS", &keys)],
    );
    let client = Client::new(&runtime.url).with_token(key);
    let (status, body) = client.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["agents"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(
        status_of(&format!("{}/api/agents", runtime.url), None).await,
        StatusCode::UNAUTHORIZED
    );
    for path in ["/health/live", "/health/ready", "/metrics"] {
        assert_eq!(
            status_of(&format!("{}{path}", runtime.url), None).await,
            StatusCode::OK,
            "{path}"
        );
    }
}
