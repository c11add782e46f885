//! A replica's identity and lease settings: the name it owns executions under, and how long
//! that ownership lasts unless renewed.

/// Shortest lease: renewals every third of it must fit between the database's round trips.
pub const LEASE_MS_MIN: u64 = 300;
/// Longest lease: an hour, past which a lost replica's executions would seem to hang.
pub const LEASE_MS_MAX: u64 = 3_600_000;
const REPLICA_ID_MAX: usize = 64;

/// The host name plus a random suffix: two processes on one host are still told apart.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agentnexus".to_owned());
    let host: String = host
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .take(REPLICA_ID_MAX - 9)
        .collect();
    let random = ulid::Ulid::new().random() as u32;
    format!("{host}-{random:08x}")
}

/// A replica id is shown in the API and logs: a short name of letters, digits, `.`, `_`, `-`.
pub fn validate_replica_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > REPLICA_ID_MAX || !id.chars().all(allowed) {
        return Err(format!(
            "replica_id must be 1 to {REPLICA_ID_MAX} letters, digits, '.', '_' or '-', not {id:?}"
        ));
    }
    Ok(())
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_replica_id_is_valid_and_new_at_each_start() {
        let (a, b) = (default_replica_id(), default_replica_id());
        assert_eq!(validate_replica_id(&a), Ok(()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_replica_id_is_a_short_plain_name() {
        assert!(validate_replica_id("replica-1.eu_west").is_ok());
        for bad in ["", "has space", "slash/", &"x".repeat(65)] {
            assert!(validate_replica_id(bad).is_err(), "{bad:?}");
        }
    }
}
