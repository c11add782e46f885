//! The external programs the tests drive, each with how to get it. A test asks `have(tool)`
//! first: a missing tool goes through `skip` (a failure when `AGENTNEXUS_REQUIRE_TOOLS` is set),
//! so every tool follows the same rule. `scripts/test` installs them all.

use std::path::Path;
use std::process::{Command, Stdio};

/// A program (or Python module) some tests need and a fresh machine may lack.
#[derive(Clone, Copy, Debug)]
pub enum Tool {
    /// Agents written in Python, the store-fault lock holder, the YAML reader.
    Python3,
    /// PyYAML, through which the monitoring-stack tests read YAML.
    PyYaml,
    /// The OpenTelemetry SDK with its OTLP/HTTP exporter, the official OpenAI instrumentation
    /// and the OpenAI client: agents instrumented as real ones are.
    OtelPython,
    /// The Autobahn WebSocket conformance runner.
    Kosoku,
    /// Offline schema validation of the Kubernetes manifests.
    KubernetesValidate,
    /// Prometheus's checker: configs, rules, rule unit tests, the metrics text.
    Promtool,
    /// A real Prometheus server scraping the runtime.
    Prometheus,
    /// Alertmanager's config checker.
    Amtool,
    /// Node.js with the `ws` package, for the spec's JavaScript clients.
    NodeWs,
    /// A real NATS server for the NATS bus.
    NatsServer,
    /// PostgreSQL's server programs (`initdb`, `pg_ctl`, `psql`): the shared store's database.
    Postgres,
    /// PgBouncer, the transaction-pooling proxy the shared store must work through.
    PgBouncer,
    /// nginx, the docker-compose cluster profile's proxy, run with its config.
    Nginx,
    /// Headless Chromium and its WebDriver server, chromedriver: the console's browser tests.
    Chromium,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Python3 => "python3",
            Tool::PyYaml => "PyYAML",
            Tool::OtelPython => {
                "python3 with opentelemetry-sdk, its OTLP/HTTP exporter, the openai-v2 instrumentation and openai"
            }
            Tool::Kosoku => "kosoku",
            Tool::KubernetesValidate => "kubernetes-validate",
            Tool::Promtool => "promtool",
            Tool::Prometheus => "prometheus",
            Tool::Amtool => "amtool",
            Tool::NodeWs => "Node.js with its ws package",
            Tool::NatsServer => "nats-server",
            Tool::Postgres => "PostgreSQL (initdb, pg_ctl)",
            Tool::PgBouncer => "pgbouncer",
            Tool::Nginx => "nginx",
            Tool::Chromium => "chromium and chromedriver",
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Tool::Python3 => "apt-get install python3",
            Tool::PyYaml => "pip install PyYAML",
            // Unpinned, pip picks versions that do not work together.
            Tool::OtelPython => "pip install the versions scripts/test pins",
            Tool::Kosoku => "pip install kosoku",
            Tool::KubernetesValidate => "pip install kubernetes-validate",
            Tool::Promtool | Tool::Prometheus => "apt-get install prometheus",
            Tool::Amtool => "apt-get install prometheus-alertmanager",
            Tool::NodeWs => "apt-get install node-ws",
            Tool::NatsServer => "apt-get install nats-server",
            Tool::Postgres => "apt-get install postgresql",
            Tool::PgBouncer => "apt-get install pgbouncer",
            Tool::Nginx => "apt-get install nginx-light",
            Tool::Chromium => "apt-get install chromium chromium-driver",
        }
    }

    fn present(self) -> bool {
        match self {
            Tool::PyYaml => succeeds("python3", &["-c", "import yaml"]),
            Tool::OtelPython => otel_python().is_some(),
            Tool::NodeWs => {
                succeeds("node", &["--version"]) && Path::new(NODE_PATH).join("ws").exists()
            }
            // Debian installs it in /usr/sbin, which a user's PATH may lack.
            Tool::NatsServer => on_path("nats-server") || Path::new(NATS_SERVER_SBIN).exists(),
            Tool::Postgres => super::postgres::bin_dir().is_some(),
            Tool::PgBouncer => super::postgres::pgbouncer().is_some(),
            // Debian installs it in /usr/sbin, which a user's PATH may lack.
            Tool::Nginx => on_path("nginx") || Path::new(NGINX_SBIN).exists(),
            Tool::Chromium => {
                Path::new(super::browser::CHROMIUM).exists() && on_path("chromedriver")
            }
            other => on_path(other.name()),
        }
    }
}

/// Where Debian's `nats-server` package puts the server.
pub const NATS_SERVER_SBIN: &str = "/usr/sbin/nats-server";

/// Where Debian's `nginx-light` package puts nginx.
pub const NGINX_SBIN: &str = "/usr/sbin/nginx";

/// Where Debian's `node-ws` puts the `ws` package (Node's `NODE_PATH` for the tests).
pub const NODE_PATH: &str = "/usr/share/nodejs";

/// Whether `tool` is there; if not, `skip`s with what is missing and how to install it, and
/// returns `false` (the caller returns early).
pub fn have(tool: Tool) -> bool {
    tool.present()
        || super::skip(&format!(
            "{} is not installed ({}; scripts/test installs it)",
            tool.name(),
            tool.install_hint()
        ))
}

/// What an instrumented Python agent imports (see `tests/agents/openai_chat.py`).
const OTEL_IMPORTS: &str = "import opentelemetry.sdk.trace, \
    opentelemetry.exporter.otlp.proto.http.trace_exporter, \
    opentelemetry.instrumentation.openai_v2, openai, sys; print(sys.executable)";

/// The `python3` on `PATH` (the tests' virtualenv under `scripts/test`) if it has what an
/// instrumented agent imports, as an absolute path: the command of such an agent, which runs
/// with the executor's environment, not the test's.
pub fn otel_python() -> Option<std::path::PathBuf> {
    let out = Command::new("python3")
        .args(["-c", OTEL_IMPORTS])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !path.trim().is_empty()).then(|| path.trim().into())
}

/// Whether `program` is found on `PATH` (a shell's `command -v`).
pub fn on_path(program: &str) -> bool {
    succeeds("sh", &["-c", &format!("command -v '{program}'")])
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
