//! Agent definitions: created and deleted by an admin, with the agent's metric series kept in
//! step (exactly while the agent is defined) and its revenue gauge exact.

use crate::config;
use crate::domain::{self, Agent, Wei};
use crate::store::StoreError;

use super::{Caller, Error, Result, Runtime};

impl Runtime {
    pub async fn create_agent(&self, caller: &Caller, agent: Agent) -> Result<Agent> {
        if !caller.admin {
            return Err(Error::Forbidden("only an admin may define agents".into()));
        }
        config::validate_agent(&agent).map_err(Error::Invalid)?;
        let _gate = self.revenue_gate.write().await;
        // An id defined before keeps its completed executions, and so its revenue.
        let revenue = self.store.revenue(&agent.id).await?;
        match self.store.put_agent(&agent, false, false).await {
            Err(StoreError::AlreadyExists(what)) => {
                Err(Error::Conflict(format!("{what} already exists")))
            }
            Err(e) => Err(e.into()),
            Ok(()) => {
                self.metrics.register_agent(&agent, &self.users, revenue.0);
                Ok(agent)
            }
        }
    }

    pub async fn agents(&self) -> Result<Vec<Agent>> {
        Ok(self.store.list_agents().await?)
    }

    pub async fn agent(&self, id: &str) -> Result<Agent> {
        if domain::validate_agent_id(id).is_err() {
            return Err(Error::InvalidId(id.to_owned(), "agent"));
        }
        match self.store.get_agent(id).await? {
            Some((agent, _)) => Ok(agent),
            None => Err(Error::AgentNotFound(id.to_owned())),
        }
    }

    pub async fn delete_agent(&self, caller: &Caller, id: &str) -> Result<()> {
        if !caller.admin {
            return Err(Error::Forbidden("only an admin may delete agents".into()));
        }
        if domain::validate_agent_id(id).is_err() {
            return Err(Error::InvalidId(id.to_owned(), "agent"));
        }
        match self.store.get_agent(id).await? {
            None => Err(Error::AgentNotFound(id.to_owned())),
            Some((_, true)) => Err(Error::Conflict(format!(
                "agent {id:?} is defined in the configuration file; remove it there"
            ))),
            Some((_, false)) => {
                let _gate = self.revenue_gate.write().await;
                self.store.delete_agent(id).await?;
                self.metrics.remove_agent(id);
                Ok(())
            }
        }
    }

    pub async fn revenue(&self, id: &str) -> Result<Wei> {
        self.agent(id).await?;
        Ok(self.store.revenue(id).await?)
    }
}
