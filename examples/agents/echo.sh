#!/bin/sh
# Echo agent: logs what it received and returns it as its output.
input=$(cat)
echo "received input of ${#input} bytes for execution $EXECUTION_ID"
printf '{"echo": %s}\n' "$input"
