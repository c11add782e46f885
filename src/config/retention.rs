//! Retention settings: `retention_days` (whole days; 0, the default, keeps everything) and
//! `retention_interval_secs` (how often the deletion runs, and the store's size is measured).

use super::{Config, ConfigError};
use crate::domain::EpochMs;

const DAY_MS: EpochMs = 24 * 60 * 60 * 1000;

pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    if config.retention_interval_secs == 0 {
        return Err(ConfigError::Invalid(
            "retention_interval_secs must be at least 1".into(),
        ));
    }
    Ok(())
}

impl Config {
    /// How long finished executions are kept, in milliseconds; `None`: forever.
    pub fn retention_ms(&self) -> Option<EpochMs> {
        (self.retention_days > 0).then(|| EpochMs::from(self.retention_days) * DAY_MS)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::load_str;

    #[test]
    fn retention_is_off_unless_a_number_of_whole_days_is_given() {
        let config = load_str("").unwrap();
        assert_eq!(config.retention_days, 0);
        assert_eq!(config.retention_ms(), None);
        assert_eq!(config.retention_interval_secs, 300);
        let config = load_str("retention_days = 30").unwrap();
        assert_eq!(config.retention_ms(), Some(30 * 86_400_000));
    }

    #[test]
    fn retention_that_is_not_whole_days_is_refused_naming_the_key() {
        for bad in [
            "retention_days = 1.5",
            "retention_days = -1",
            "retention_days = \"7d\"",
        ] {
            let err = load_str(bad).unwrap_err().to_string();
            assert!(err.contains("retention_days"), "{bad}: {err}");
        }
        let err = load_str("retention_interval_secs = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention_interval_secs"), "{err}");
    }
}
