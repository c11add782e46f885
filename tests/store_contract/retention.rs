//! The retention part of the store contract: which executions `delete_finished_before` takes
//! (finished before the cutoff, never unfinished ones), in bounded batches, without losing
//! revenue; and the size the store reports.

use std::sync::Arc;

use agentnexus::domain::{EpochMs, Execution, Status, Wei, now_ms};
use agentnexus::store::{RetentionBatch, Store, TransitionOutcome};

use super::{Backend, agent, all_events, change, logs, running, submit};

const DAY_MS: EpochMs = 24 * 60 * 60 * 1000;

/// Ends a running execution with `to`, as if at `at`.
async fn end_at(b: &Backend, e: &Execution, to: Status, at: EpochMs) {
    let mut t = change(e, Status::Running, to);
    t.at = at;
    assert_eq!(
        b.store.transition(t).await.unwrap(),
        TransitionOutcome::Applied
    );
}

/// An execution of `price` that ran and ended with `to` at `at`.
async fn ended(b: &Backend, price: u128, to: Status, at: EpochMs) -> Execution {
    let e = running(b, &agent("shop", price)).await;
    end_at(b, &e, to, at).await;
    e
}

async fn exists(b: &Backend, e: &Execution) -> bool {
    b.store
        .get_execution(&e.execution_id)
        .await
        .unwrap()
        .is_some()
}

async fn delete_all(store: &dyn Store, cutoff: EpochMs, batch: RetentionBatch) -> u64 {
    let mut total = 0;
    loop {
        let deleted = store.delete_finished_before(cutoff, batch).await.unwrap();
        total += deleted;
        if deleted == 0 {
            return total;
        }
    }
}

pub(super) async fn finished_executions_older_than_the_cutoff_go_with_their_events(b: &Backend) {
    let old = now_ms() - 10 * DAY_MS;
    let mut gone = Vec::new();
    for end in [Status::Completed, Status::Failed, Status::Cancelled] {
        let e = running(b, &agent("shop", 1)).await;
        b.store
            .append(&e.execution_id, logs(&["a", "b"]))
            .await
            .unwrap();
        end_at(b, &e, end, old).await;
        gone.push(e);
    }
    let recent = ended(b, 1, Status::Completed, now_ms()).await;
    // Unfinished ones stay whatever their age, even with a cutoff in the future.
    let still_running = running(b, &agent("shop", 1)).await;
    let pending = submit(b, &agent("shop", 1), "alice").await;

    let deleted = delete_all(&*b.store, now_ms() - DAY_MS, RetentionBatch::default()).await;
    assert_eq!(deleted, 3);
    for e in &gone {
        assert!(!exists(b, e).await, "{} is deleted", e.execution_id);
        assert!(all_events(b, e).await.is_empty(), "with its events");
    }
    assert!(
        exists(b, &recent).await,
        "one that ended after the cutoff stays"
    );
    assert_eq!(all_events(b, &recent).await.len(), 3);

    let deleted = delete_all(
        &*b.store,
        now_ms() + 365 * DAY_MS,
        RetentionBatch::default(),
    )
    .await;
    assert_eq!(deleted, 1, "only the finished one");
    assert!(!exists(b, &recent).await);
    let unfinished = b.store.unfinished_executions().await.unwrap();
    let ids: Vec<_> = unfinished.iter().map(|e| &e.execution_id).collect();
    assert_eq!(ids, [&still_running.execution_id, &pending.execution_id]);
    assert_eq!(all_events(b, &still_running).await.len(), 2);
}

pub(super) async fn revenue_stays_when_completed_executions_are_deleted(b: &Backend) {
    let old = now_ms() - 10 * DAY_MS;
    // Beyond 64 bits, exactly.
    let price = u128::from(u64::MAX) + 7;
    for _ in 0..3 {
        ended(b, price, Status::Completed, old).await;
    }
    ended(b, price, Status::Failed, old).await;
    ended(b, price, Status::Completed, now_ms()).await;
    assert_eq!(b.store.revenue("shop").await.unwrap(), Wei(4 * price));

    // Over two batches, so a retired total is added to.
    let batch = RetentionBatch {
        executions: 2,
        events: u64::MAX,
    };
    assert_eq!(delete_all(&*b.store, now_ms() - DAY_MS, batch).await, 4);
    assert_eq!(b.store.revenue("shop").await.unwrap(), Wei(4 * price));
    assert_eq!(delete_all(&*b.store, now_ms() + DAY_MS, batch).await, 1);
    assert_eq!(b.store.revenue("shop").await.unwrap(), Wei(4 * price));

    ended(b, price, Status::Completed, now_ms()).await;
    assert_eq!(b.store.revenue("shop").await.unwrap(), Wei(5 * price));
    assert_eq!(b.store.revenue("nobody").await.unwrap(), Wei(0));
}

pub(super) async fn deletion_goes_in_bounded_batches(b: &Backend) {
    let old = now_ms() - 10 * DAY_MS;
    for _ in 0..7 {
        // Three events each: pending, running, the end.
        ended(b, 1, Status::Completed, old).await;
    }
    let cutoff = now_ms();
    let by_count = RetentionBatch {
        executions: 3,
        events: u64::MAX,
    };
    assert_eq!(
        b.store
            .delete_finished_before(cutoff, by_count)
            .await
            .unwrap(),
        3
    );
    let by_events = RetentionBatch {
        executions: 100,
        events: 7,
    };
    assert_eq!(
        b.store
            .delete_finished_before(cutoff, by_events)
            .await
            .unwrap(),
        2
    );
    let tiny = RetentionBatch {
        executions: 100,
        events: 1,
    };
    assert_eq!(
        b.store.delete_finished_before(cutoff, tiny).await.unwrap(),
        1,
        "one execution is always taken, however many events it has"
    );
    assert_eq!(delete_all(&*b.store, cutoff, by_count).await, 1);
}

pub(super) async fn concurrent_deletions_take_each_execution_once(b: &Backend) {
    let old = now_ms() - 10 * DAY_MS;
    // Several agents in every batch: their retired totals are updated by concurrent batches.
    let shops = ["shop-a", "shop-b", "shop-c", "shop-d"];
    for i in 0..20 {
        let e = running(b, &agent(shops[i % shops.len()], 5)).await;
        end_at(b, &e, Status::Completed, old).await;
    }
    let batch = RetentionBatch {
        executions: 3,
        events: u64::MAX,
    };
    let cutoff = now_ms();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let store = Arc::clone(&b.store);
            tokio::spawn(async move { delete_all(&*store, cutoff, batch).await })
        })
        .collect();
    let mut total = 0;
    for run in runs {
        total += run.await.unwrap();
    }
    assert_eq!(total, 20, "each deleted and counted once");
    for shop in shops {
        assert_eq!(b.store.revenue(shop).await.unwrap(), Wei(25), "{shop}");
    }
}

pub(super) async fn the_size_is_reported_and_grows_with_what_is_written(b: &Backend) {
    let empty = b.store.size_bytes().await.unwrap();
    assert!(empty > 0, "even an empty database takes room");
    let e = running(b, &agent("shop", 1)).await;
    let line = "x".repeat(1000);
    for _ in 0..20 {
        let lines: Vec<&str> = (0..100).map(|_| line.as_str()).collect();
        b.store.append(&e.execution_id, logs(&lines)).await.unwrap();
    }
    b.store.flush().await.unwrap();
    let written = b.store.size_bytes().await.unwrap();
    assert!(
        written >= empty + 1_000_000,
        "2 MB of events show: {empty} → {written}"
    );
    // Deleting does not give the room back to the file system at once (neither SQLite nor
    // PostgreSQL shrinks files without a vacuum): it is reused by later writes.
    end_at(b, &e, Status::Completed, now_ms() - 10 * DAY_MS).await;
    assert_eq!(
        delete_all(&*b.store, now_ms(), RetentionBatch::default()).await,
        1
    );
    assert!(b.store.size_bytes().await.unwrap() > 0);
}
