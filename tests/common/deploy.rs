//! The files under `deploy/` read as tests need them: paths, text, YAML (through PyYAML, which
//! the callers check for first), the Grafana dashboard, and running a tool on them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
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
