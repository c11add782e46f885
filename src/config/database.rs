//! `database_url`: where a shared PostgreSQL database is, as a URL that may hold a password.
//! The URL is shown only redacted (`Debug`, `Display`, logs), so a password never leaves it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A `postgres://` (or `postgresql://`) URL, checked by `validate`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Checks the scheme and that PostgreSQL's client reads the rest (`sslmode` among it:
    /// `disable`, `prefer` or `require`); the error never quotes the URL (it may hold a password).
    pub fn validate(&self) -> Result<tokio_postgres::Config, String> {
        let url = self.0.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(
                "must be a postgres:// or postgresql:// URL (e.g. postgres://user:password@host:5432/agentnexus)"
                    .into(),
            );
        }
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err("names no host".into());
        }
        Ok(config)
    }

    /// The URL with its password replaced by `***`, in the user part and in a `password=`
    /// parameter.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return "***".into();
        };
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let mut out = url[..scheme_end].to_owned();
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let user_info = &rest[..at];
                match user_info.find(':') {
                    Some(colon) => {
                        out.push_str(&user_info[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(user_info),
                }
                out.push_str(&rest[at..authority_end]);
            }
            None => out.push_str(&rest[..authority_end]),
        }
        let tail = &rest[authority_end..];
        match tail.split_once('?') {
            Some((path, query)) => {
                out.push_str(path);
                out.push('?');
                let params: Vec<String> = query
                    .split('&')
                    .map(|p| match p.split_once('=') {
                        Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                            format!("{key}=***")
                        }
                        _ => p.to_owned(),
                    })
                    .collect();
                out.push_str(&params.join("&"));
            }
            None => out.push_str(tail),
        }
        out
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::DatabaseUrl;

    #[test]
    fn the_password_is_never_shown() {
        let url =
            DatabaseUrl::new("postgres://app:s3cret@db.local:5432/agentnexus?sslmode=disable");
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db.local:5432/agentnexus?sslmode=disable"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        let url = DatabaseUrl::new("postgresql://db/agentnexus?user=app&password=s3cret");
        assert_eq!(
            url.to_string(),
            "postgresql://db/agentnexus?user=app&password=***"
        );
        assert_eq!(
            DatabaseUrl::new("postgres://app@db/x").to_string(),
            "postgres://app@db/x"
        );
    }

    #[test]
    fn only_postgres_urls_with_a_known_sslmode_are_accepted() {
        let ok = |u: &str| DatabaseUrl::new(u).validate().map(|_| ());
        assert!(ok("postgres://app:pw@127.0.0.1:5432/agentnexus").is_ok());
        assert!(ok("postgresql://app@db/agentnexus?sslmode=prefer").is_ok());
        let err = ok("mysql://app:pw@db/agentnexus").unwrap_err();
        assert!(err.contains("postgres://"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        assert!(ok("postgres://db/x?sslmode=require").is_ok());
        let err = ok("postgres://db/x?sslmode=verify-full").unwrap_err();
        assert!(err.contains("sslmode"), "{err}");
        assert!(ok("postgres://db:notaport/x").is_err());
    }
}
