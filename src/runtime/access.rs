//! Who may see what: a caller sees their own executions, an admin all of them, and someone
//! else's execution looks exactly like a missing one. The reads the API makes of executions
//! and their events go through here.

use crate::domain::{Event, Execution, ExecutionId};
use crate::store::ExecutionFilter;
use crate::stream::Follow;

use super::{Error, Result, Runtime};

/// Who is asking. A user sees only their own executions; an admin sees all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub admin: bool,
}

impl Caller {
    /// The caller of a server with no API keys (open mode, loopback only).
    pub fn local() -> Caller {
        Caller {
            user_id: "local".into(),
            admin: true,
        }
    }

    pub(super) fn sees(&self, execution: &Execution) -> bool {
        self.admin || execution.user_id == self.user_id
    }
}

impl Runtime {
    /// The execution, if it exists and the caller may see it; someone else's is "not found".
    pub async fn execution(&self, caller: &Caller, id: &str) -> Result<Execution> {
        let Some(parsed) = ExecutionId::parse(id) else {
            return Err(Error::InvalidId(id.to_owned(), "execution"));
        };
        let mut execution = self
            .store
            .get_execution(&parsed)
            .await?
            .filter(|e| caller.sees(e))
            .ok_or_else(|| Error::ExecutionNotFound(id.to_owned()))?;
        // Usage is stored with the end; while it runs here, it is read live.
        if !execution.status.is_terminal()
            && let Some(usage) = self.telemetry.usage_of(&parsed)
        {
            execution.usage = usage;
        }
        Ok(execution)
    }

    pub async fn executions(
        &self,
        caller: &Caller,
        mut filter: ExecutionFilter,
    ) -> Result<Vec<Execution>> {
        if !caller.admin {
            filter.user_id = Some(caller.user_id.clone());
        }
        Ok(self.store.list_executions(filter).await?)
    }

    /// Stored events after `since`: at most `limit` of them, none after the one that brings
    /// their data to `max_bytes` (`Store::events`).
    pub async fn events(
        &self,
        caller: &Caller,
        id: &str,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>> {
        let execution = self.execution(caller, id).await?;
        // The row is read before the events, and a client learns of an event only after the
        // commit that also raised `last_seq`: a `since` above it is none the client saw.
        check_since(execution.execution_id.as_str(), since, execution.last_seq)?;
        Ok(self
            .store
            .events(&execution.execution_id, since, limit, max_bytes)
            .await?)
    }

    /// Every event after `since`, stored then live, until the final status.
    pub async fn follow(&self, caller: &Caller, id: &str, since: u64) -> Result<Follow> {
        let execution = self.execution(caller, id).await?;
        let follow = Follow::start(self.store.clone(), &*self.bus, &execution, since).await?;
        check_since(id, since, follow.start_last_seq)?;
        Ok(follow)
    }
}

/// A reader's `since` must be a seq the execution has (or 0): past its end, the reader would
/// wait for events it already claims to have, and never see the final status.
fn check_since(id: &str, since: u64, last_seq: u64) -> Result<()> {
    if since > last_seq {
        return Err(Error::SinceBeyondEnd {
            id: id.to_owned(),
            since,
            last_seq,
        });
    }
    Ok(())
}
