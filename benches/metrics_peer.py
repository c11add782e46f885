"""Peer for benches/metrics.rs: the same metric set and cardinality with Python's
prometheus_client, timing generate_latest() and a labelled counter increment."""
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

AGENTS, USERS, RUNNING, RENDERS = 1000, 10, 500, 21
BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]

r = CollectorRegistry()
executions = Counter("agentnexus_executions", "Total agent executions", ["agent_id", "agent_name", "user_id"], registry=r)
duration = Histogram("agentnexus_execution_duration_seconds", "Execution duration distribution", ["agent_id", "agent_name", "status"], buckets=BUCKETS, registry=r)
statuses = Counter("agentnexus_execution_status", "Executions by status", ["status", "agent_id"], registry=r)
running = Gauge("agentnexus_agent_running_executions", "Currently running executions", ["agent_id", "agent_name"], registry=r)
revenue = Gauge("agentnexus_agent_revenue_wei", "Total revenue per agent", ["agent_id", "agent_name"], registry=r)
memory = Gauge("agentnexus_container_memory_bytes", "Container memory usage", ["execution_id", "agent_id"], registry=r)
cpu = Gauge("agentnexus_container_cpu_percent", "Container CPU usage", ["execution_id", "agent_id"], registry=r)

for a in range(AGENTS):
    aid, name = f"agent-{a}", f"Agent number {a}"
    for u in range(USERS):
        executions.labels(aid, name, f"user-{u}").inc()
    for i, s in enumerate(["COMPLETED", "FAILED", "CANCELLED"]):
        duration.labels(aid, name, s).observe(0.5 * (i + 1))
        statuses.labels(s, aid).inc()
    running.labels(aid, name).set(0)
    revenue.labels(aid, name).set(0)
for i in range(RUNNING):
    a = i % AGENTS
    running.labels(f"agent-{a}", f"Agent number {a}").inc()
    memory.labels(f"exec_{1000000 + i:026}", f"agent-{a}").set(128 << 20)
    cpu.labels(f"exec_{1000000 + i:026}", f"agent-{a}").set(42.5)

times = []
for _ in range(RENDERS):
    t = time.perf_counter()
    out = generate_latest(r)
    times.append((time.perf_counter() - t) * 1000)
times.sort()
print(f"peer python prometheus_client: render median {times[len(times) // 2]:.2f} ms; {sum(1 for l in out.splitlines() if not l.startswith(b'#'))} series")

N = 200000
t = time.perf_counter()
for i in range(N):
    executions.labels(f"agent-{i % AGENTS}", f"Agent number {i % AGENTS}", f"user-{i % USERS}").inc()
print(f"peer python prometheus_client: {(time.perf_counter() - t) / N * 1e9:.0f} ns per labelled counter increment")
