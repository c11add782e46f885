#!/usr/bin/env bash
# Fuzzes the REST API with Schemathesis against the real server: every response must match the
# OpenAPI document the server serves (status codes, content types, bodies), no 5xx, every error
# `{"error": {"code", "message"}}`. Exits non-zero on any failure.
#
# What the fuzzer may run: it generates agents with arbitrary commands, so it never acts as an
# admin where executions can be submitted.
#   1. as a plain user, every operation: it can submit executions only of the agents in the
#      config below (harmless `sh -c` one-liners); defining or removing agents is refused (403)
#      after the body has been validated, so bad agent bodies are still fuzzed;
#   2. as an admin, only the agent operations (`/api/agents...`): agents are created, read and
#      deleted with valid and invalid bodies, but nothing can submit them.
#
# Environment: SCHEMATHESIS_SEED (default 1: the same cases every run), SCHEMATHESIS_MAX_TIME
# (seconds for the user run, default 150; the admin run gets half), SCHEMATHESIS_BIN (the server
# binary; default: built here in debug). Without python3's venv the run is skipped (a failure when
# AGENTNEXUS_REQUIRE_TOOLS is set, as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
venv=target/venv-schemathesis
if [ "$("$venv/bin/st" --version 2>/dev/null)" != "st, version $version" ]; then
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q "schemathesis==$version"; }; then
    # The one rule for a missing tool: a failure under AGENTNEXUS_REQUIRE_TOOLS (CI), else a
    # visible skip.
    message="cannot install Schemathesis $version into $venv (python3 and python3-venv are needed)"
    if [ -n "${AGENTNEXUS_REQUIRE_TOOLS:-}" ]; then
      echo "error: $message" >&2
      exit 1
    fi
    echo "SKIPPED: $message" >&2
    exit 0
  fi
fi

bin=${SCHEMATHESIS_BIN:-}
if [ -z "$bin" ]; then
  cargo build --locked -q --bin agentnexus
  bin=target/debug/agentnexus
fi
seed=${SCHEMATHESIS_SEED:-1}
max_time=${SCHEMATHESIS_MAX_TIME:-150}

# Under target/, like the virtualenv: nothing outside the project is touched.
mkdir -p target
work=$(mktemp -d "$PWD/target/schemathesis.XXXXXX")
server=
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM

user_key=schemathesis-user-key-0123456789
admin_key=schemathesis-admin-key-0123456789
cat >"$work/agentnexus.toml" <<TOML
bind = "127.0.0.1:0"
data_dir = "$work/data"
max_concurrent_executions = 4
default_timeout_secs = 10
kill_grace_ms = 500
shutdown_grace_secs = 2

[docker]
enabled = false

[[api_keys]]
key = "$user_key"
user = "fuzzer"

[[api_keys]]
key = "$admin_key"
user = "operator"
admin = true

[[agents]]
id = "quick"
name = "Quick"
price_wei = "10"
runtime = { type = "process", command = "sh", args = ["-c", "echo '{\"ok\": true}'"] }

[[agents]]
id = "sleepy"
name = "Sleepy"
price_wei = "0"
timeout_secs = 5
runtime = { type = "process", command = "sh", args = ["-c", "sleep 2; echo done"] }

[[agents]]
id = "strict"
name = "Strict"
price_wei = "340282366920938463463374607431768211455"
input_schema = { type = "object", required = ["n"], properties = { n = { type = "integer" } } }
runtime = { type = "process", command = "sh", args = ["-c", "exit 3"] }
TOML

RUST_LOG=warn,agentnexus::server=info NO_COLOR=1 "$bin" serve --config "$work/agentnexus.toml" \
  >"$work/server.log" 2>&1 </dev/null &
server=$!
addr=
for _ in $(seq 1 300); do
  addr=$(sed -n 's/.*agentnexus listening.*addr=\([0-9.:]*\).*/\1/p' "$work/server.log" | head -1)
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "schemathesis: the server did not start:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
url="http://$addr"

# One worker: with two, Hypothesis inside Schemathesis parses source from both threads at once,
# which Python 3.11's `ast` does not survive (SystemError: AST constructor recursion depth
# mismatch) — a flaky "Runtime Error" that is not the server's.
st() {
  "$venv/bin/st" --config-file scripts/schemathesis.toml run "$url/api/openapi.json" \
    --checks all --seed "$seed" --workers 1 --request-timeout 20 --no-color "$@"
}

status=0
echo "== schemathesis: every operation, as a user ($url, seed $seed, ${max_time}s)"
st -H "Authorization: Bearer $user_key" --max-time "$max_time" || status=1
echo "== schemathesis: the agent operations, as an admin ($((max_time / 2))s)"
st -H "Authorization: Bearer $admin_key" --include-path-regex '^/api/agents' \
  --max-time "$((max_time / 2))" || status=1

if ! kill -0 "$server" 2>/dev/null; then
  echo "schemathesis: the server died during the run:" >&2
  status=1
fi
if [ "$status" != 0 ]; then
  cp "$work/server.log" target/schemathesis-server.log
  echo "schemathesis: the server's last warnings and errors (whole log: target/schemathesis-server.log):" >&2
  grep -E "WARN|ERROR" "$work/server.log" | tail -n 40 >&2 || true
fi
if grep -q "panicked" "$work/server.log"; then
  echo "schemathesis: the server panicked:" >&2
  grep -A5 "panicked" "$work/server.log" >&2
  status=1
fi
exit "$status"
