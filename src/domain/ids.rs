//! Execution ids as a type. An id is `exec_` and a ULID: unique, and ordered by creation time,
//! which is also the order in which executions are listed. It is the one name of an execution
//! outside the store: how a store keys its rows is its own affair.

use std::borrow::Borrow;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// An execution's id. Cheap to clone: live feeds and handles are keyed by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ExecutionId(Arc<str>);

/// Ids made in one millisecond still sort in the order they were made: the generator counts
/// up from the last one (ULID's monotonic mode) instead of drawing a fresh random part.
static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

impl ExecutionId {
    /// A new id, greater than every id this process made before.
    pub fn generate() -> ExecutionId {
        let ulid = {
            let mut generator = GENERATOR.lock().unwrap();
            let generator = generator.get_or_insert_with(ulid::Generator::new);
            // Fails only when 2^80 ids were made in one millisecond.
            generator.generate().unwrap_or_else(|_| ulid::Ulid::new())
        };
        ExecutionId(format!("exec_{}", ulid.to_string().to_lowercase()).into())
    }

    /// The id `id` names, if it is well-formed (`EXECUTION_ID_PATTERN`).
    pub fn parse(id: &str) -> Option<ExecutionId> {
        is_valid_execution_id(id).then(|| ExecutionId(id.into()))
    }

    /// An id as a store holds it: it was checked when the execution was created.
    pub fn stored(id: String) -> ExecutionId {
        ExecutionId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn is_valid_execution_id(id: &str) -> bool {
    id.strip_prefix("exec_")
        .is_some_and(|rest| rest.len() == 26 && ulid::Ulid::from_string(rest).is_ok())
}

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ExecutionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ExecutionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ExecutionId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        let id = ExecutionId::generate();
        assert_eq!(ExecutionId::parse(id.as_str()), Some(id));
        assert_eq!(ExecutionId::parse("exec_123"), None);
        assert_eq!(ExecutionId::parse("../etc/passwd"), None);
    }

    #[test]
    fn ids_sort_in_the_order_they_were_made() {
        let ids: Vec<ExecutionId> = (0..1000).map(|_| ExecutionId::generate()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }
}
