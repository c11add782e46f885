//! The files under `deploy/` read as tests need them: paths, text, YAML (through PyYAML, which
//! the callers check for first), the Grafana dashboard, the Kubernetes variants as kustomize
//! assembles them, running a tool on them, and the real binary started as the image starts it.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use super::ServerProcess;

pub fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs a command; returns whether it succeeded and its stdout and stderr together.
pub fn run(program: &str, args: &[&str], dir: Option<&Path>) -> (bool, String) {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every document of a YAML file, as JSON.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let (ok, out) = run(
        "python3",
        &[
            "-c",
            "import sys, json, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
            path.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "reading {} as YAML failed: {out}", path.display());
    serde_json::from_str(&out).unwrap()
}

pub fn yaml(path: &str) -> Value {
    let mut docs = yaml_docs(&deploy(path));
    assert_eq!(docs.len(), 1, "{path}: expected one YAML document");
    docs.remove(0)
}

pub fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/dashboards/agentnexus.json")).unwrap()
}

/// The dashboard's panels, each with the title of the row it is under.
pub fn panels_by_row(dashboard: &Value) -> Vec<(String, Value)> {
    let mut panels: Vec<Value> = dashboard["panels"].as_array().unwrap().clone();
    panels.sort_by_key(|p| (p["gridPos"]["y"].as_u64(), p["gridPos"]["x"].as_u64()));
    let mut row = String::new();
    let mut out = Vec::new();
    for panel in panels {
        if panel["type"] == "row" {
            row = panel["title"].as_str().unwrap().to_owned();
        } else {
            out.push((row.clone(), panel));
        }
    }
    out
}

/// The host path compose mounts at `target` in `service`, relative to deploy/.
pub fn compose_mount_source(compose: &Value, service: &str, target: &str) -> Option<String> {
    compose["services"][service]["volumes"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|v| {
            let mut parts = v.split(':');
            let (source, to) = (parts.next()?, parts.next()?);
            (to == target).then(|| source.to_owned())
        })
}

/// The kustomization keys the reader below understands. The kustomizations under deploy/k8s
/// use no patches or generators, so that what kustomize builds is exactly what this reads.
const KUSTOMIZE_KEYS: [&str; 6] = [
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "images",
];

/// The manifests of the kustomization in `dir` (under deploy/), as `kubectl apply -k` would
/// apply them, each with its file (relative to deploy/): resources followed into directories,
/// then the namespace, the `labels` (on metadata only: `includeSelectors: false`) and the
/// image tags applied. Fails on any other kustomization key.
pub fn kustomize(dir: &str) -> Vec<(String, Value)> {
    let kustomization = yaml(&format!("{dir}/kustomization.yaml"));
    for key in kustomization.as_object().unwrap().keys() {
        assert!(
            KUSTOMIZE_KEYS.contains(&key.as_str()),
            "{dir}/kustomization.yaml: `{key}` is more than a list of manifests"
        );
    }
    let mut docs = Vec::new();
    for resource in kustomization["resources"].as_array().unwrap() {
        let path = normalize(&format!("{dir}/{}", resource.as_str().unwrap()));
        if deploy(&path).is_dir() {
            docs.extend(kustomize(&path));
        } else {
            docs.extend(
                yaml_docs(&deploy(&path))
                    .into_iter()
                    .map(|d| (path.clone(), d)),
            );
        }
    }
    for (_, doc) in &mut docs {
        if let Some(namespace) = kustomization.get("namespace")
            && doc["kind"] != "Namespace"
        {
            doc["metadata"]["namespace"] = namespace.clone();
        }
        for set in kustomization["labels"].as_array().into_iter().flatten() {
            assert_eq!(set["includeSelectors"], false, "{dir}: labels on selectors");
            for (k, v) in set["pairs"].as_object().unwrap() {
                doc["metadata"]["labels"][k] = v.clone();
            }
        }
        for image in kustomization["images"].as_array().into_iter().flatten() {
            retag(doc, image["name"].as_str().unwrap(), &image["newTag"]);
        }
    }
    docs
}

/// `a/b/../c` → `a/c`.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "." | "" => {}
            ".." => {
                parts.pop().expect("a path inside deploy/");
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

fn retag(doc: &mut Value, name: &str, tag: &Value) {
    let Some(containers) = doc["spec"]["template"]["spec"]["containers"].as_array_mut() else {
        return;
    };
    for container in containers {
        let image = container["image"].as_str().unwrap_or_default();
        if image == name || image.split_once(':').is_some_and(|(n, _)| n == name) {
            container["image"] = Value::String(format!("{name}:{}", tag.as_str().unwrap()));
        }
    }
}

/// The one manifest of `kind` in `docs`.
pub fn one(docs: &[(String, Value)], kind: &str) -> Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0].clone()
}

/// The manifest of `kind` named `name` in `docs`.
pub fn named(docs: &[(String, Value)], kind: &str, name: &str) -> Value {
    docs.iter()
        .find(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .1
        .clone()
}

/// Whether a selector's `matchLabels` (or a Service's plain selector) selects `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.get("matchLabels").unwrap_or(selector);
    let wanted = wanted.as_object().expect("a selector of labels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| &labels[k] == v)
}

/// The real binary started as the image starts it — `agentnexus serve`, the config file named
/// by `AGENTNEXUS_CONFIG` — with a shipped config file and `env` (the API keys).
pub fn spawn_like_the_image(config: &Path, data: &Path, env: &[(&str, &str)]) -> ServerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentnexus"));
    command
        .arg("serve")
        .env("AGENTNEXUS_CONFIG", config)
        // The shipped file binds 0.0.0.0:3001; the test takes a free loopback port.
        .env("AGENTNEXUS_BIND", "127.0.0.1:0")
        .env("AGENTNEXUS_DATA_DIR", data.join("data"))
        .env_remove("AGENTNEXUS_API_KEYS")
        .env_remove("AGENTNEXUS_API_KEYS_FILE");
    for (k, v) in env {
        command.env(k, v);
    }
    ServerProcess::spawn_command(command)
}

pub fn toml_port(config: &str) -> u16 {
    let bind = config
        .lines()
        .find_map(|l| l.strip_prefix("bind = \""))
        .expect("a bind line");
    bind.trim_end_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

pub async fn status_of(url: &str, token: Option<&str>) -> StatusCode {
    let mut request = reqwest::Client::new().get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    request.send().await.unwrap().status()
}
