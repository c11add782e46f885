"""An agent instrumented as real ones are: the OpenTelemetry SDK configured by the environment
alone (the runtime's OTEL_* variables), the official OpenAI instrumentation, and chat calls
through the official OpenAI client. The telemetry tests run it against a fake chat server.

Input (JSON on stdin, as the runtime passes it):
  baseUrl   the chat server's base URL (".../v1")
  calls     chat calls to make; 0 = until stopped
  goFile    if set, after the first call wait until this file exists (the test creates it
            once it has seen that call's span), then go on
  tool      if true, one manual tool span (gen_ai.operation.name = execute_tool) at the end
  child     if true, start a sleeping child process first and print its pid too
  joinTrace if false, ignore TRACEPARENT, as an agent does that only sets up the SDK

The SDK does not read TRACEPARENT by itself: the agent joins the execution's trace from it
with the W3C propagator, as the runtime's documentation tells agents to.

Prints `pid N` for itself (and its child), its TRACEPARENT, a log line between calls, and a
JSON output line.
"""

import json
import os
import subprocess
import sys
import time

from openai import OpenAI
from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


def say(line):
    print(line, flush=True)


def main():
    job = json.load(sys.stdin)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument()
    parent = os.environ.get("TRACEPARENT")
    if parent and job.get("joinTrace", True):
        context.attach(TraceContextTextMapPropagator().extract({"traceparent": parent}))

    say(f"pid {os.getpid()}")
    say(f"traceparent {parent}")
    if job.get("child"):
        child = subprocess.Popen(["sleep", "1000"])
        say(f"pid {child.pid}")

    client = OpenAI(base_url=job["baseUrl"], api_key="test", max_retries=0)
    calls = job.get("calls", 1)
    made = 0
    while calls == 0 or made < calls:
        say(f"calling {made + 1}")
        reply = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": f"question {made + 1}"}],
        )
        made += 1
        say(f"answered {made}: {reply.choices[0].message.content}")
        if made == 1 and job.get("goFile"):
            while not os.path.exists(job["goFile"]):
                time.sleep(0.02)
            say("go")

    if job.get("tool"):
        tracer = trace.get_tracer("tests.agents.openai_chat")
        with tracer.start_as_current_span("execute_tool lookup") as span:
            span.set_attribute("gen_ai.operation.name", "execute_tool")
            span.set_attribute("gen_ai.tool.name", "lookup")
        say("tool lookup done")

    provider.force_flush()
    provider.shutdown()
    say(json.dumps({"calls": made}))


if __name__ == "__main__":
    main()
