#!/bin/sh
# Slow counting agent: logs one line every 100 ms, `count` times (input {"count": N}, default 50).
count=$(printf '%s' "$INPUT_DATA" | sed -n 's/.*"count"[^0-9]*\([0-9][0-9]*\).*/\1/p')
count=${count:-50}
i=1
while [ "$i" -le "$count" ]; do
  echo "tick $i of $count"
  [ $((i % 10)) -eq 0 ] && echo "progress: $i/$count" >&2
  sleep 0.1
  i=$((i + 1))
done
printf '{"result": "counted to %s"}\n' "$count" > "$AGENTNEXUS_OUTPUT"
