//! The store contract: every behaviour of the `Store` trait, run against each backend. A backend
//! joins with one line at the bottom (`store_contract!(name, opener)`), where `opener` gives a
//! fresh, empty store (or `None`, after `common::skip`, when its database is not installed).

mod common;
#[path = "store_contract/retention.rs"]
mod retention;

use std::sync::Arc;

use agentnexus::bus::{Bus, Live, LocalBus};
use agentnexus::domain::{
    Agent, BudgetLimit, Event, EventKind, ExecError, Execution, ExecutionId, ModelUsage,
    ProcessGroup, Runtime, Status, TokenCounts, Usage, Wei, now_ms,
};
use agentnexus::store::{
    ExecutionFilter, LostStream, NewEvent, NewExecution, PostgresOptions, PostgresStore, RunStats,
    SqliteOptions, SqliteStore, Store, StoreError, Transition, TransitionOutcome, WriteHealth,
};
use common::postgres::{Route, database};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A store under test, with the bus it publishes to and the place its data lives.
struct Backend {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    _lost: mpsc::UnboundedReceiver<LostStream>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Option<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
    let (lost, lost_streams) = mpsc::unbounded_channel();
    let options = SqliteOptions {
        sync_commits: false,
        outage_limit: std::time::Duration::from_secs(30),
    };
    let store = SqliteStore::open(dir.path(), options, bus.clone(), lost).unwrap();
    Some(Backend {
        store: Arc::new(store),
        bus,
        _lost: lost_streams,
        _dir: Some(dir),
    })
}

/// The shared store on a fresh database of the test cluster, reached by `route`.
async fn postgres_by(route: Route) -> Option<Backend> {
    let url = database(route)?;
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
    let (lost, lost_streams) = mpsc::unbounded_channel();
    let options = PostgresOptions {
        outage_limit: std::time::Duration::from_secs(30),
    };
    let store = PostgresStore::open(&url, options, bus.clone(), lost)
        .await
        .unwrap();
    Some(Backend {
        store: Arc::new(store),
        bus,
        _lost: lost_streams,
        _dir: None,
    })
}

async fn postgres() -> Option<Backend> {
    postgres_by(Route::Direct).await
}

async fn pgbouncer() -> Option<Backend> {
    postgres_by(Route::PgBouncer).await
}

/// Runs each named behaviour against a backend, as one test per behaviour.
macro_rules! store_contract {
    ($backend:ident, $open:path) => {
        mod $backend {
            store_contract!(@tests $open;
                agents_are_created_listed_replaced_and_deleted,
                a_new_execution_is_pending_with_its_first_event,
                a_change_applies_from_the_expected_status_with_its_event,
                a_change_the_status_machine_forbids_is_refused,
                a_terminal_status_is_final,
                of_racing_changes_exactly_one_wins,
                appended_events_are_numbered_without_gaps,
                events_after_the_end_are_discarded,
                events_are_read_after_since_within_limit_and_bytes,
                executions_are_listed_newest_first_filtered_and_paged,
                unfinished_executions_are_those_pending_or_running_oldest_first,
                revenue_sums_the_prices_of_completed_executions,
                the_process_of_a_run_is_recorded,
                committed_events_are_published_in_order_and_the_end_closes_the_feed,
                a_healthy_store_answers_ping_and_reports_writing,
            );
            store_contract!(@tests $open, retention;
                finished_executions_older_than_the_cutoff_go_with_their_events,
                revenue_stays_when_completed_executions_are_deleted,
                deletion_goes_in_bounded_batches,
                concurrent_deletions_take_each_execution_once,
                the_size_is_reported_and_grows_with_what_is_written,
            );
        }
    };
    (@tests $open:path; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let Some(backend) = $open().await else { return };
                super::$test(&backend).await;
            }
        )*
    };
    (@tests $open:path, $module:ident; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let Some(backend) = $open().await else { return };
                super::$module::$test(&backend).await;
            }
        )*
    };
}

store_contract!(sqlite, super::sqlite);
store_contract!(postgres, super::postgres);
store_contract!(pgbouncer, super::pgbouncer);

// ---- helpers ----

fn agent(id: &str, price_wei: u128) -> Agent {
    Agent {
        id: id.into(),
        name: format!("Agent {id}"),
        price_wei: Wei(price_wei),
        timeout_secs: 60,
        input_schema: None,
        budget: Default::default(),
        runtime: Runtime::Process {
            command: "true".into(),
            args: vec![],
            env: Default::default(),
            workdir: None,
        },
    }
}

async fn submit(b: &Backend, agent: &Agent, user: &str) -> Execution {
    b.store
        .create_execution(NewExecution {
            id: ExecutionId::generate(),
            agent: agent.clone(),
            user_id: user.into(),
            input: json!({"n": 1}),
            created_at: now_ms(),
        })
        .await
        .unwrap()
}

fn change(execution: &Execution, from: Status, to: Status) -> Transition {
    Transition {
        id: execution.execution_id.clone(),
        from,
        to,
        at: now_ms(),
        output: None,
        error: None,
        exit_code: None,
        stats: None,
        owner: (to == Status::Running).then(|| "replica-a".to_owned()),
    }
}

async fn transition(b: &Backend, e: &Execution, from: Status, to: Status) -> TransitionOutcome {
    b.store.transition(change(e, from, to)).await.unwrap()
}

async fn get(b: &Backend, e: &Execution) -> Execution {
    b.store
        .get_execution(&e.execution_id)
        .await
        .unwrap()
        .unwrap()
}

async fn all_events(b: &Backend, e: &Execution) -> Vec<Event> {
    b.store.flush().await.unwrap();
    b.store
        .events(&e.execution_id, 0, usize::MAX, usize::MAX)
        .await
        .unwrap()
}

fn log(text: &str) -> NewEvent {
    NewEvent {
        kind: EventKind::Log,
        data: serde_json::value::to_raw_value(&json!({"log": text, "stream": "stdout"})).unwrap(),
        timestamp: now_ms(),
    }
}

fn logs(texts: &[&str]) -> Vec<NewEvent> {
    texts.iter().map(|t| log(t)).collect()
}

fn data(event: &Event) -> Value {
    serde_json::from_str(event.data.get()).unwrap()
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn statuses(events: &[Event]) -> Vec<Status> {
    events.iter().filter_map(Event::status).collect()
}

async fn running(b: &Backend, agent: &Agent) -> Execution {
    let e = submit(b, agent, "alice").await;
    let outcome = transition(b, &e, Status::Pending, Status::Running).await;
    assert_eq!(outcome, TransitionOutcome::Applied);
    e
}

// ---- the contract ----

async fn agents_are_created_listed_replaced_and_deleted(b: &Backend) {
    let s = &b.store;
    s.put_agent(&agent("zeta", 1), false, false).await.unwrap();
    s.put_agent(&agent("alpha", 2), true, false).await.unwrap();
    let ids: Vec<String> = s
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["alpha", "zeta"], "listed by id");
    assert_eq!(
        s.get_agent("alpha").await.unwrap(),
        Some((agent("alpha", 2), true))
    );
    assert_eq!(
        s.get_agent("zeta").await.unwrap(),
        Some((agent("zeta", 1), false))
    );
    assert_eq!(s.get_agent("nobody").await.unwrap(), None);

    let again = s.put_agent(&agent("zeta", 7), false, false).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists(_))),
        "{again:?}"
    );
    assert_eq!(
        s.get_agent("zeta").await.unwrap().unwrap().0.price_wei,
        Wei(1)
    );
    s.put_agent(&agent("zeta", 7), true, true).await.unwrap();
    assert_eq!(
        s.get_agent("zeta").await.unwrap(),
        Some((agent("zeta", 7), true))
    );

    assert!(s.delete_agent("zeta").await.unwrap());
    assert!(!s.delete_agent("zeta").await.unwrap(), "already gone");
    assert_eq!(s.get_agent("zeta").await.unwrap(), None);
    assert_eq!(s.list_agents().await.unwrap().len(), 1);
}

async fn a_new_execution_is_pending_with_its_first_event(b: &Backend) {
    let a = agent("echo", 5);
    let e = submit(b, &a, "alice").await;
    assert_eq!(e.status, Status::Pending);
    assert_eq!(e.last_seq, 1);
    assert_eq!((e.agent_id.as_str(), e.user_id.as_str()), ("echo", "alice"));
    assert_eq!((e.agent.clone(), e.price_wei), (a, Wei(5)));
    assert_eq!(e.input, json!({"n": 1}));
    assert_eq!(get(b, &e).await, e, "read back as created");
    let events = all_events(b, &e).await;
    assert_eq!(seqs(&events), [1]);
    assert_eq!(data(&events[0]), json!({"status": "PENDING"}));
    assert_eq!(events[0].timestamp, e.created_at);
    let unknown = ExecutionId::generate();
    assert_eq!(b.store.get_execution(&unknown).await.unwrap(), None);
}

async fn a_change_applies_from_the_expected_status_with_its_event(b: &Backend) {
    let e = running(b, &agent("echo", 0)).await;
    let started = get(b, &e).await;
    assert_eq!(started.status, Status::Running);
    assert!(started.started_at.is_some() && started.finished_at.is_none());
    assert_eq!(
        started.replica_id.as_deref(),
        Some("replica-a"),
        "the owner"
    );

    let mut done = change(&e, Status::Running, Status::Completed);
    done.output = Some(json!({"answer": 42}));
    done.exit_code = Some(0);
    done.stats = Some(RunStats {
        peak_memory_bytes: Some(1024),
        peak_cpu_percent: Some(12.5),
        log_lines: 3,
        log_lines_dropped: 1,
        usage: reported_usage(),
    });
    let outcome = b.store.transition(done).await.unwrap();
    assert_eq!(outcome, TransitionOutcome::Applied);

    let ended = get(b, &e).await;
    assert_eq!(ended.status, Status::Completed);
    assert_eq!(ended.output, Some(json!({"answer": 42})));
    assert_eq!((ended.exit_code, ended.error.clone()), (Some(0), None));
    assert_eq!(
        (ended.peak_memory_bytes, ended.peak_cpu_percent),
        (Some(1024), Some(12.5))
    );
    assert_eq!((ended.log_lines, ended.log_lines_dropped), (3, 1));
    assert!(ended.finished_at.is_some() && ended.duration_ms.is_some());
    assert_eq!(ended.last_seq, 3);
    assert_eq!(ended.replica_id.as_deref(), Some("replica-a"), "kept");
    assert_eq!(
        ended.usage,
        reported_usage(),
        "the usage is kept with the end"
    );

    let events = all_events(b, &e).await;
    assert_eq!(seqs(&events), [1, 2, 3]);
    assert_eq!(data(&events[1]), json!({"status": "RUNNING"}));
    assert_eq!(
        data(&events[2]),
        json!({"status": "COMPLETED", "output": {"answer": 42}, "exitCode": 0,
               "usage": serde_json::to_value(reported_usage()).unwrap()})
    );
    assert_eq!(
        data(&events[2])["usage"]["costUsd"],
        json!("0.000123456789012345678"),
        "the cost's every digit"
    );

    let f = submit(b, &agent("echo", 0), "alice").await;
    let mut failed = change(&f, Status::Pending, Status::Failed);
    failed.error = Some(ExecError::new("exit_code", "code 3"));
    assert_eq!(
        b.store.transition(failed).await.unwrap(),
        TransitionOutcome::Applied
    );
    let f = get(b, &f).await;
    assert_eq!(f.error, Some(ExecError::new("exit_code", "code 3")));
    assert_eq!(f.started_at, None, "never ran");
    assert!(
        !f.usage.reported && f.usage.cost_usd.is_none(),
        "no usage is not a zero cost"
    );

    let g = submit(b, &agent("echo", 0), "alice").await;
    let mut over = change(&g, Status::Pending, Status::Failed);
    let breach = ExecError::budget_exceeded(BudgetLimit::MaxTokens, "12 tokens over 10");
    over.error = Some(breach.clone());
    b.store.transition(over).await.unwrap();
    assert_eq!(get(b, &g).await.error, Some(breach), "error.budget is kept");
}

fn reported_usage() -> Usage {
    let tokens = TokenCounts {
        input_tokens: 10,
        output_tokens: 5,
        cache_read_tokens: 4,
        cache_creation_tokens: 0,
        reasoning_tokens: 2,
    };
    Usage {
        tokens,
        llm_calls: 1,
        tool_calls: 2,
        cost_usd: Some("0.000123456789012345678".parse().unwrap()),
        reported: true,
        by_model: [(
            "gpt-4o".to_owned(),
            ModelUsage {
                tokens,
                llm_calls: 1,
                cost_usd: Some("0.000123456789012345678".parse().unwrap()),
            },
        )]
        .into(),
    }
}

async fn a_change_the_status_machine_forbids_is_refused(b: &Backend) {
    let e = submit(b, &agent("echo", 0), "alice").await;
    let wrong_from = transition(b, &e, Status::Running, Status::Completed).await;
    assert_eq!(wrong_from, TransitionOutcome::Refused(Status::Pending));
    let same = transition(b, &e, Status::Pending, Status::Pending).await;
    assert_eq!(same, TransitionOutcome::Refused(Status::Pending));
    transition(b, &e, Status::Pending, Status::Running).await;
    let back = transition(b, &e, Status::Running, Status::Pending).await;
    assert_eq!(back, TransitionOutcome::Refused(Status::Running));
    assert_eq!(get(b, &e).await.status, Status::Running);
    assert_eq!(
        statuses(&all_events(b, &e).await),
        [Status::Pending, Status::Running]
    );
}

async fn a_terminal_status_is_final(b: &Backend) {
    for end in [Status::Completed, Status::Failed, Status::Cancelled] {
        let e = running(b, &agent("echo", 0)).await;
        assert_eq!(
            transition(b, &e, Status::Running, end).await,
            TransitionOutcome::Applied
        );
        for next in Status::ALL {
            let outcome = transition(b, &e, end, next).await;
            assert_eq!(outcome, TransitionOutcome::Refused(end), "{end} → {next}");
            let outcome = transition(b, &e, Status::Running, next).await;
            assert_eq!(outcome, TransitionOutcome::Refused(end), "{end} → {next}");
        }
        let ended = get(b, &e).await;
        assert_eq!(ended.status, end);
        assert_eq!(statuses(&all_events(b, &e).await).last(), Some(&end));
        assert_eq!(ended.last_seq, 3, "nothing recorded after the end");
    }
}

async fn of_racing_changes_exactly_one_wins(b: &Backend) {
    let a = agent("echo", 0);
    for _ in 0..5 {
        let e = running(b, &a).await;
        let racers = [Status::Completed, Status::Cancelled, Status::Failed]
            .into_iter()
            .cycle()
            .take(12)
            .map(|to| {
                let store = b.store.clone();
                let request = change(&e, Status::Running, to);
                tokio::spawn(async move { (to, store.transition(request).await.unwrap()) })
            })
            .collect::<Vec<_>>();
        let mut winners = Vec::new();
        for racer in racers {
            let (to, outcome) = racer.await.unwrap();
            match outcome {
                TransitionOutcome::Applied => winners.push(to),
                TransitionOutcome::Refused(found) => assert!(found.is_terminal(), "{found}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let ended = get(b, &e).await;
        assert_eq!(ended.status, winners[0]);
        let finals: Vec<Status> = statuses(&all_events(b, &e).await)
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(finals, winners, "exactly one final status event");
    }
}

async fn appended_events_are_numbered_without_gaps(b: &Backend) {
    let a = agent("echo", 0);
    let (one, two) = (running(b, &a).await, running(b, &a).await);
    let writers = [(one.clone(), "one"), (two.clone(), "two")].map(|(e, name)| {
        let store = b.store.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                let batch = (0..5).map(|j| log(&format!("{name} {i}.{j}"))).collect();
                store.append(&e.execution_id, batch).await.unwrap();
            }
        })
    });
    for writer in writers {
        writer.await.unwrap();
    }
    for (e, name) in [(&one, "one"), (&two, "two")] {
        let events = all_events(b, e).await;
        assert_eq!(
            seqs(&events),
            (1..=102).collect::<Vec<u64>>(),
            "gapless, in order"
        );
        let lines: Vec<String> = events[2..]
            .iter()
            .map(|ev| data(ev)["log"].as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (0..20)
            .flat_map(|i| (0..5).map(move |j| format!("{name} {i}.{j}")))
            .collect();
        assert_eq!(
            lines, expected,
            "in the order appended, nothing of the other"
        );
        assert_eq!(get(b, e).await.last_seq, 102);
    }
    let outcome = transition(b, &one, Status::Running, Status::Completed).await;
    assert_eq!(outcome, TransitionOutcome::Applied);
    let events = all_events(b, &one).await;
    assert_eq!(
        events.last().unwrap().seq,
        103,
        "the status event takes the next seq"
    );
}

async fn events_after_the_end_are_discarded(b: &Backend) {
    let e = running(b, &agent("echo", 0)).await;
    b.store
        .append(&e.execution_id, logs(&["before"]))
        .await
        .unwrap();
    transition(b, &e, Status::Running, Status::Cancelled).await;
    b.store
        .append(&e.execution_id, logs(&["after"]))
        .await
        .unwrap();
    let events = all_events(b, &e).await;
    assert_eq!(seqs(&events), [1, 2, 3, 4]);
    assert_eq!(events.last().unwrap().status(), Some(Status::Cancelled));
    assert_eq!(get(b, &e).await.last_seq, 4);
}

async fn events_are_read_after_since_within_limit_and_bytes(b: &Backend) {
    let e = running(b, &agent("echo", 0)).await;
    let texts: Vec<String> = (3..=12).map(|i| format!("line {i:02}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    b.store.append(&e.execution_id, logs(&refs)).await.unwrap();
    b.store.flush().await.unwrap();
    let read = |since, limit, bytes| b.store.events(&e.execution_id, since, limit, bytes);

    assert_eq!(
        seqs(&read(0, 1000, usize::MAX).await.unwrap()),
        (1..=12).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&read(4, 3, usize::MAX).await.unwrap()), [5, 6, 7]);
    assert_eq!(seqs(&read(10, 1000, usize::MAX).await.unwrap()), [11, 12]);
    assert!(
        read(12, 1000, usize::MAX).await.unwrap().is_empty(),
        "at the end"
    );
    assert!(
        read(500, 1000, usize::MAX).await.unwrap().is_empty(),
        "beyond the end"
    );
    assert!(
        read(u64::MAX, 1000, usize::MAX).await.unwrap().is_empty(),
        "far beyond"
    );

    // The page stops after the event that brings its data to the budget.
    let one = read(2, 1, usize::MAX).await.unwrap()[0].data.get().len();
    assert_eq!(seqs(&read(2, 1000, 2 * one).await.unwrap()), [3, 4]);
    assert_eq!(seqs(&read(2, 1000, 2 * one + 1).await.unwrap()), [3, 4, 5]);
    assert_eq!(
        seqs(&read(2, 1000, 1).await.unwrap()),
        [3],
        "never an empty page"
    );

    let other = running(b, &agent("echo", 0)).await;
    assert_eq!(
        seqs(&all_events(b, &other).await),
        [1, 2],
        "streams are separate"
    );
}

async fn executions_are_listed_newest_first_filtered_and_paged(b: &Backend) {
    let (echo, cat) = (agent("echo", 0), agent("cat", 0));
    let mut made = Vec::new();
    for (i, a) in [&echo, &cat, &echo, &echo, &cat].into_iter().enumerate() {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        made.push(submit(b, a, user).await);
    }
    transition(b, &made[2], Status::Pending, Status::Running).await;
    let ids = |list: Vec<Execution>| -> Vec<ExecutionId> {
        list.into_iter().map(|e| e.execution_id).collect()
    };
    let id = |i: usize| made[i].execution_id.clone();
    let list = |filter: ExecutionFilter| b.store.list_executions(filter);
    let all = ExecutionFilter {
        limit: 100,
        ..ExecutionFilter::default()
    };

    assert_eq!(
        ids(list(all.clone()).await.unwrap()),
        [id(4), id(3), id(2), id(1), id(0)]
    );
    let by_agent = ExecutionFilter {
        agent_id: Some("echo".into()),
        ..all.clone()
    };
    assert_eq!(ids(list(by_agent).await.unwrap()), [id(3), id(2), id(0)]);
    let by_user = ExecutionFilter {
        user_id: Some("bob".into()),
        ..all.clone()
    };
    assert_eq!(ids(list(by_user).await.unwrap()), [id(3), id(1)]);
    let by_status = ExecutionFilter {
        status: Some(Status::Running),
        ..all.clone()
    };
    assert_eq!(ids(list(by_status).await.unwrap()), [id(2)]);

    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = list(ExecutionFilter {
            before,
            limit: 2,
            ..all.clone()
        })
        .await
        .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.execution_id.clone());
        pages.push(ids(page));
    }
    assert_eq!(pages, [vec![id(4), id(3)], vec![id(2), id(1)], vec![id(0)]]);
}

async fn unfinished_executions_are_those_pending_or_running_oldest_first(b: &Backend) {
    let a = agent("echo", 0);
    let pending = submit(b, &a, "alice").await;
    let run = running(b, &a).await;
    let done = running(b, &a).await;
    transition(b, &done, Status::Running, Status::Completed).await;
    let cancelled = submit(b, &a, "alice").await;
    transition(b, &cancelled, Status::Pending, Status::Cancelled).await;
    let later = submit(b, &a, "alice").await;
    let unfinished: Vec<(ExecutionId, Status)> = (b.store.unfinished_executions().await.unwrap())
        .into_iter()
        .map(|e| (e.execution_id, e.status))
        .collect();
    assert_eq!(
        unfinished,
        [
            (pending.execution_id, Status::Pending),
            (run.execution_id, Status::Running),
            (later.execution_id, Status::Pending),
        ]
    );
}

async fn revenue_sums_the_prices_of_completed_executions(b: &Backend) {
    // Beyond 64 bits, exactly.
    let price = u128::from(u64::MAX) + 7;
    let (rich, other) = (agent("rich", price), agent("other", 3));
    for (a, end) in [
        (&rich, Status::Completed),
        (&rich, Status::Completed),
        (&rich, Status::Failed),
        (&rich, Status::Cancelled),
        (&other, Status::Completed),
    ] {
        let e = running(b, a).await;
        transition(b, &e, Status::Running, end).await;
    }
    submit(b, &rich, "alice").await;
    assert_eq!(b.store.revenue("rich").await.unwrap(), Wei(2 * price));
    assert_eq!(b.store.revenue("other").await.unwrap(), Wei(3));
    assert_eq!(b.store.revenue("nobody").await.unwrap(), Wei(0));
}

async fn the_process_of_a_run_is_recorded(b: &Backend) {
    let e = running(b, &agent("echo", 0)).await;
    assert_eq!(get(b, &e).await.process, None);
    let process = ProcessGroup {
        group: 4242,
        started_ticks: 123_456,
        cgroup: Some("/sys/fs/cgroup/agentnexus/exec".into()),
    };
    b.store
        .record_process(&e.execution_id, process.clone())
        .await
        .unwrap();
    b.store.flush().await.unwrap();
    assert_eq!(get(b, &e).await.process, Some(process));
}

async fn committed_events_are_published_in_order_and_the_end_closes_the_feed(b: &Backend) {
    let e = submit(b, &agent("echo", 0), "alice").await;
    let mut live = b.bus.subscribe(&e.execution_id).await;
    transition(b, &e, Status::Pending, Status::Running).await;
    b.store
        .append(&e.execution_id, logs(&["a", "b"]))
        .await
        .unwrap();
    b.store.append(&e.execution_id, logs(&["c"])).await.unwrap();
    transition(b, &e, Status::Running, Status::Completed).await;

    let mut published = Vec::new();
    loop {
        let batch = match live.next().await {
            Live::Batch(batch) => batch,
            Live::Closed => break,
            Live::Lagged => panic!("a handful of batches fit the feed"),
        };
        // Whatever was published is already readable.
        let last = batch.last().unwrap().event.seq;
        let stored = b
            .store
            .events(&e.execution_id, 0, usize::MAX, usize::MAX)
            .await
            .unwrap();
        assert!(stored.last().unwrap().seq >= last);
        published.extend(batch.iter().map(|ev| ev.event.seq));
    }
    // The creation's event (seq 1) may come too: it can be published after `create_execution`
    // has answered.
    assert!(
        published.is_sorted_by(|a, b| a < b),
        "{published:?}: in order, once"
    );
    let after: Vec<u64> = published.into_iter().filter(|seq| *seq > 1).collect();
    assert_eq!(after, [2, 3, 4, 5, 6], "every event after the subscription");
    let stored = all_events(b, &e).await;
    assert_eq!(stored.last().unwrap().status(), Some(Status::Completed));
}

async fn a_healthy_store_answers_ping_and_reports_writing(b: &Backend) {
    b.store.ping().await.unwrap();
    assert_eq!(*b.store.write_health().borrow(), WriteHealth::Writing);
    b.store.flush().await.unwrap();
}
