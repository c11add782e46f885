#!/bin/sh
# Failing agent: explains itself on stderr and exits with code 3.
echo "starting work"
echo "error: the upstream model refused the request" >&2
exit 3
