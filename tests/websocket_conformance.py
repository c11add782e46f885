#!/usr/bin/env python3
"""Autobahn conformance of /ws through kosoku (`pip install kosoku`), adapted to a server that
is not an echo server.

Usage: websocket_conformance.py WS_URL REPORT_DIR [MAX_MESSAGE_BYTES]

kosoku drives the Autobahn TestSuite's case files in fuzzingclient mode, which assumes the server
under test echoes every data message back. /ws does not echo: it answers every text message that
is not one of its JSON requests with one `error` message (`bad_request`), and every binary message
likewise. So each case is judged in one of three ways:

* protocol cases (no data message is expected back: pings, reserved bits and opcodes, invalid
  fragmentation, invalid UTF-8, close handling): kosoku's own verdict, unchanged. These are the
  cases where a WebSocket server can be wrong.
* echo cases (sections 1-7 and 10 where the case expects its message echoed): kosoku's expected
  event list with each echoed message replaced by "one `bad_request` error message" must match
  what was received, in order (pongs and all); and the server must not have failed the
  connection (no close code other than 1000 from it).
* section 9 (large and many messages, meant to measure echo speed): the server must answer the
  first message with a text message (the error) and close normally when asked, or, for messages
  over MAX_MESSAGE_BYTES (the server's configured cap, default 65536), close with 1009.

Exits 0 when every selected case passes its judgement; prints one line per failure and a summary.
"""

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

SECTIONS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
GOOD = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}
# The start of the server's error message (kosoku reports only the first 60 characters).
ERROR_REPLY = '{"type":"error","data":{"code":"bad_request"'


def main() -> int:
    url, outdir = sys.argv[1], Path(sys.argv[2])
    max_message = int(sys.argv[3]) if len(sys.argv) > 3 else 65536
    kosoku = shutil.which("kosoku")
    if kosoku is None:
        print("kosoku is required: pip install kosoku", file=sys.stderr)
        return 2
    args = [kosoku, url, "-p", "8", "-o", str(outdir)]
    for section in SECTIONS:
        args += ["-i", section]
    # kosoku exits 1 when any case fails its echo-based verdict; the reports are what we judge.
    run = subprocess.run(args, capture_output=True, text=True, timeout=240)
    index_file = outdir / "index.json"
    if not index_file.exists():
        print(run.stdout, run.stderr, file=sys.stderr)
        return 2
    index = json.loads(index_file.read_text())
    (cases,) = index.values()

    kinds = Counter()
    failures = []
    for case_id, summary in sorted(cases.items(), key=lambda c: [int(p) for p in c[0].split(".")]):
        report = json.loads((outdir / summary["reportfile"]).with_suffix(".json").read_text())
        kind, problem = judge(case_id, report, max_message)
        kinds[kind] += 1
        if problem:
            failures.append(f"{case_id} [{kind}] {problem}")

    for line in failures:
        print("FAIL", line)
    print(
        f"{len(cases)} cases: "
        + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        + f"; {len(failures)} failed"
    )
    return 1 if failures or not cases else 0


def judge(case_id: str, report: dict, max_message: int):
    """Returns (kind, problem or None)."""
    behavior, close = report["behavior"], report["behaviorClose"]
    expected = report["expected"] or {}
    echoes = any(e[0] == "message" for events in expected.values() for e in events)

    if case_id.startswith("9."):
        remote = report["remoteCloseCode"]
        size = payload_size(report["description"])
        if remote == 1009:
            if size is not None and size > max_message:
                return "large", None
            return "large", f"closed 1009 for a message of {size} bytes: {report['result']}"
        answered = re.search(r"got (binary = False|text|\d+\.)", report["result"])
        if not answered:
            return "large", f"no text answer: {report['result']}"
        if remote not in (None, 1000) or close not in GOOD_CLOSE:
            return "large", f"close {close} (remote code {remote}): {report['resultClose']}"
        return "large", None

    if not echoes:
        if behavior in GOOD and close in GOOD_CLOSE:
            return "protocol", None
        return "protocol", f"{behavior}/{close}: {report['result']} / {report['resultClose']}"

    received = [normalize(e) for e in report["received"]]
    alternatives = [[substitute(e) for e in events] for events in expected.values()]
    if received not in alternatives:
        return "echo", f"received {received}, expected one of {alternatives}"
    remote = report["remoteCloseCode"]
    sent = sum(int(octets) * n for octets, n in report["txOctetStats"].items())
    if remote == 1009 and sent > max_message:
        # A message over the server's cap (7.1.6 sends 256 KiB): "too big" is the right answer.
        return "echo", None
    if remote not in (None, 1000):
        return "echo", f"the server closed with {remote}: {report['remoteCloseReason']}"
    if close not in GOOD_CLOSE and not report["droppedByMe"]:
        # kosoku drops the connection itself when its echo never comes (killAfter); that says
        # nothing about the server. Anything else is the server's doing.
        return "echo", f"close {close}: {report['resultClose']}"
    return "echo", None


def normalize(event):
    if event[0] == "message":
        text, binary = event[1], event[2]
        if not binary and text.startswith(ERROR_REPLY):
            return ["reply"]
        return ["message", text[:60], binary]
    return list(event)


def substitute(event):
    if event[0] == "message":
        return ["reply"]
    return list(event)


def payload_size(description: str):
    match = re.search(r"length (\d+) \* 2\*\*(\d+)", description)
    if match:
        return int(match.group(1)) * 2 ** int(match.group(2))
    match = re.search(r"payload size (\d+)", description)
    return int(match.group(1)) if match else None


if __name__ == "__main__":
    sys.exit(main())
