#!/bin/sh
# Entrypoint of the AgentNexus image. For `serve` it assembles the effective configuration:
#   1. the main file, $AGENTNEXUS_CONFIG (default /etc/agentnexus/agentnexus.toml);
#   2. every *.toml in $AGENTNEXUS_CONFIG_DIR (default /etc/agentnexus/conf.d), in name order:
#      mount a Kubernetes Secret or a local file there with the [[api_keys]] tables, so keys
#      never live in the ConfigMap or in the image;
#   3. an admin key from $AGENTNEXUS_ADMIN_KEY, if set (handy for docker-compose).
# The pieces are concatenated, so they must be TOML that is valid when appended: tables
# ([[api_keys]], [docker], ...) and no top-level keys after the main file.
# The runtime reads one config file; this script exists because API keys can only come from
# that file (see docs/monitoring.md). Any other command runs the binary as given.
set -eu

if [ "${1:-serve}" != "serve" ]; then
  exec agentnexus "$@"
fi
[ $# -gt 0 ] && shift

main=${AGENTNEXUS_CONFIG:-/etc/agentnexus/agentnexus.toml}
dir=${AGENTNEXUS_CONFIG_DIR:-/etc/agentnexus/conf.d}
out_dir=${TMPDIR:-/tmp}/agentnexus-config.$$
mkdir -m 0700 "$out_dir"
out=$out_dir/agentnexus.toml
umask 077

cat "$main" > "$out"
for f in "$dir"/*.toml; do
  [ -f "$f" ] || continue
  printf '\n# --- %s\n' "$f" >> "$out"
  cat "$f" >> "$out"
done
if [ -n "${AGENTNEXUS_ADMIN_KEY:-}" ]; then
  case $AGENTNEXUS_ADMIN_KEY in
    *'"'* | *'\'* | *'
'*) echo "AGENTNEXUS_ADMIN_KEY must not contain quotes, backslashes or newlines" >&2; exit 2 ;;
  esac
  printf '\n[[api_keys]]\nkey = "%s"\nuser = "%s"\nadmin = true\n' \
    "$AGENTNEXUS_ADMIN_KEY" "${AGENTNEXUS_ADMIN_USER:-admin}" >> "$out"
fi

exec agentnexus serve --config "$out" "$@"
