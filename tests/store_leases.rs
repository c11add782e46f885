//! The leases of a store shared between replicas, run against PostgreSQL directly and through
//! PgBouncer, with one store per replica on one database: each PENDING execution is claimed
//! once, RUNNING in the same transaction; an owner that cannot renew in time has its writes
//! refused, and the lease taken over ends the execution FAILED `replica_lost` with its final
//! event; a cancel requested through any replica reaches the owner as it renews.
//! (The embedded store queues in process and claims nothing; its queue is tested end to end.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentnexus::bus::{Bus, LocalBus};
use agentnexus::domain::{Agent, EventKind, ExecutionId, Runtime, Status, Wei, now_ms};
use agentnexus::store::{
    LostStream, NewEvent, NewExecution, PostgresOptions, PostgresStore, Store, Transition,
    TransitionOutcome,
};
use common::postgres::{Route, database};
use serde_json::json;
use tokio::sync::mpsc;

const LEASE: Duration = Duration::from_millis(400);

/// A replica's view of the database: its store, and where the store announces lost streams.
struct Replica {
    name: &'static str,
    store: Arc<PostgresStore>,
    lost: mpsc::UnboundedReceiver<LostStream>,
}

async fn replicas(route: Route) -> Option<(Replica, Replica)> {
    let url = database(route)?;
    let open = |name| {
        let url = url.clone();
        async move {
            let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
            let (tx, lost) = mpsc::unbounded_channel();
            let options = PostgresOptions {
                outage_limit: Duration::from_secs(30),
            };
            let store = PostgresStore::open(&url, options, bus, tx).await.unwrap();
            Replica {
                name,
                store: Arc::new(store),
                lost,
            }
        }
    };
    Some((open("a").await, open("b").await))
}

fn agent() -> Agent {
    Agent {
        id: "echo".into(),
        name: "Echo".into(),
        price_wei: Wei(0),
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

async fn submit(store: &PostgresStore) -> ExecutionId {
    let new = NewExecution {
        id: ExecutionId::generate(),
        agent: agent(),
        user_id: "alice".into(),
        input: json!({}),
        created_at: now_ms(),
    };
    store.create_execution(new).await.unwrap().execution_id
}

async fn each_pending_execution_is_claimed_once_by_one_replica(route: Route) {
    let Some((a, b)) = replicas(route).await else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(submit(&a.store).await);
    }
    let claim_all = |r: &Replica| {
        let store = r.store.clone();
        let name = r.name;
        async move {
            let mut claimed = Vec::new();
            while let Some(e) = store.claim_next(name, LEASE).await.unwrap() {
                assert_eq!(e.status, Status::Running);
                assert_eq!(e.replica_id.as_deref(), Some(name));
                claimed.push(e.execution_id);
            }
            claimed
        }
    };
    let (by_a, by_b) = tokio::join!(claim_all(&a), claim_all(&b));
    let mut all: Vec<ExecutionId> = by_a.into_iter().chain(by_b).collect();
    all.sort();
    assert_eq!(
        all, ids,
        "every execution claimed exactly once, oldest first"
    );
    for id in &ids {
        let events = a.store.events(id, 0, 10, 1 << 20).await.unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2], "PENDING, then RUNNING with the claim");
    }
}

async fn a_lost_lease_fences_its_owner_and_is_taken_over_as_replica_lost(route: Route) {
    let Some((mut a, b)) = replicas(route).await else {
        return;
    };
    let id = submit(&a.store).await;
    let claimed = a.store.claim_next("a", LEASE).await.unwrap().unwrap();
    assert_eq!(claimed.execution_id, id);
    assert!(
        b.store.take_over_expired("b").await.unwrap().is_empty(),
        "a live lease is not taken over"
    );
    tokio::time::sleep(LEASE * 2).await;

    // The owner, too late to renew, loses the lease: its stream is cut short and its writes
    // are refused, though nobody has taken the lease over yet.
    a.store.renew_leases("a", LEASE).await.unwrap();
    let lost = a.lost.recv().await.unwrap();
    assert_eq!(
        (lost.id.clone(), lost.error.kind.as_str()),
        (id.clone(), "replica_lost")
    );
    let line = NewEvent {
        kind: EventKind::Log,
        data: serde_json::value::to_raw_value(&json!({"line": "late"})).unwrap(),
        timestamp: now_ms(),
    };
    a.store.append(&id, vec![line]).await.unwrap();
    a.store.flush().await.unwrap();
    let done = Transition {
        id: id.clone(),
        from: Status::Running,
        to: Status::Completed,
        at: now_ms(),
        output: None,
        error: None,
        exit_code: Some(0),
        stats: None,
        owner: None,
    };
    let outcome = a.store.transition(done).await.unwrap();
    assert_eq!(
        outcome,
        TransitionOutcome::Refused(Status::Running),
        "fenced"
    );

    // Another replica takes the expired lease over and ends the execution.
    assert_eq!(
        b.store.take_over_expired("b").await.unwrap(),
        std::slice::from_ref(&id)
    );
    let ended = b.store.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(ended.status, Status::Failed);
    assert_eq!(ended.error.unwrap().kind, "replica_lost");
    assert_eq!(ended.replica_id.as_deref(), Some("b"));
    let events = b.store.events(&id, 0, 10, 1 << 20).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3], "PENDING, RUNNING, FAILED: nothing after");
    assert_eq!(events[2].kind, EventKind::Status);
}

async fn a_cancel_requested_elsewhere_reaches_the_owner_as_it_renews(route: Route) {
    let Some((a, b)) = replicas(route).await else {
        return;
    };
    let cancelled = submit(&a.store).await;
    let kept = submit(&a.store).await;
    for _ in 0..2 {
        a.store.claim_next("a", LEASE).await.unwrap().unwrap();
    }
    assert!(a.store.renew_leases("a", LEASE).await.unwrap().is_empty());
    b.store.request_cancel(&cancelled).await.unwrap();
    assert_eq!(
        a.store.renew_leases("a", LEASE).await.unwrap(),
        std::slice::from_ref(&cancelled),
        "only the execution whose cancel was requested, not {kept}"
    );
    let pending = submit(&a.store).await;
    b.store.request_cancel(&pending).await.unwrap();
    let claimed = a.store.claim_next("a", LEASE).await.unwrap().unwrap();
    assert_eq!(claimed.execution_id, pending);
    assert_eq!(
        a.store.renew_leases("a", LEASE).await.unwrap(),
        [cancelled],
        "a request on an execution not yet RUNNING is not recorded"
    );
}

macro_rules! leases {
    ($backend:ident, $route:expr) => {
        mod $backend {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn each_pending_execution_is_claimed_once_by_one_replica() {
                super::each_pending_execution_is_claimed_once_by_one_replica($route).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_lost_lease_fences_its_owner_and_is_taken_over_as_replica_lost() {
                super::a_lost_lease_fences_its_owner_and_is_taken_over_as_replica_lost($route)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_cancel_requested_elsewhere_reaches_the_owner_as_it_renews() {
                super::a_cancel_requested_elsewhere_reaches_the_owner_as_it_renews($route).await;
            }
        }
    };
}

leases!(postgres, super::Route::Direct);
leases!(pgbouncer, super::Route::PgBouncer);
