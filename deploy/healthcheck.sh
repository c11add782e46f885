#!/bin/bash
# Container health check without curl: GET a path on the local listener over bash's /dev/tcp
# and succeed on HTTP 200. Usage: healthcheck.sh [/health/live] (port: $AGENTNEXUS_PORT, 3001).
set -u
path=${1:-/health/live}
port=${AGENTNEXUS_PORT:-3001}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 3 status <&3 || exit 1
case $status in
  "HTTP/1."?" 200 "*) exit 0 ;;
  *) echo "unhealthy: ${status%$'\r'}" >&2; exit 1 ;;
esac
