//! `database_url`: where a shared PostgreSQL database is, as a URL that may hold a password.
//! The URL is shown only redacted (`Debug`, `Display`, logs), so a password never leaves it.
//! Its TLS parameters follow libpq: `sslmode` (`disable`, `prefer`, `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert`, which PostgreSQL's client does not know itself
//! (`client_url` takes them out and says how the server's certificate is to be checked).

use std::fmt;
use std::path::PathBuf;
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

    /// Checks the scheme, the TLS parameters and that PostgreSQL's client reads the rest; the
    /// error never quotes the URL (it may hold a password).
    pub fn validate(&self) -> Result<tokio_postgres::Config, String> {
        let url = self.0.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(
                "must be a postgres:// or postgresql:// URL (e.g. postgres://user:password@host:5432/agentnexus)"
                    .into(),
            );
        }
        // The cause names the option at fault (e.g. "invalid value for option `sslmode`"),
        // never its value.
        let (url, _) = client_url(url)?;
        let config =
            tokio_postgres::Config::from_str(&url).map_err(
                |e| match std::error::Error::source(&e) {
                    Some(cause) => format!("not a valid PostgreSQL URL: {e}: {cause}"),
                    None => format!("not a valid PostgreSQL URL: {e}"),
                },
            )?;
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

/// How the server's certificate is checked when the connection is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateCheck {
    /// Not at all (`prefer`, `require` without `sslrootcert`): encrypted, not authenticated.
    None,
    /// Its chain up to the root certificate(s) of this PEM file, not the name in it
    /// (`verify-ca`, or `require` with `sslrootcert`, as libpq does).
    Chain(PathBuf),
    /// Its chain, and that it names the host connected to (`verify-full`).
    ChainAndName(PathBuf),
}

/// Splits a `postgres://` URL into the URL PostgreSQL's client reads (`verify-ca` and
/// `verify-full` become `require`, `sslrootcert` is taken out) and the certificate check they
/// ask for. The error never quotes the URL.
pub fn client_url(url: &str) -> Result<(String, CertificateCheck), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), CertificateCheck::None));
    };
    let mut kept = Vec::new();
    let mut mode = "prefer".to_owned();
    let mut root = None;
    for param in query.split('&') {
        match param.split_once('=') {
            Some(("sslrootcert", path)) if !path.is_empty() => root = Some(PathBuf::from(path)),
            Some(("sslmode", value)) => mode = value.to_owned(),
            _ => kept.push(param),
        }
    }
    let needs_root = |mode: &str| {
        format!("sslmode={mode} needs sslrootcert=<a PEM file with the root certificate(s)>")
    };
    let (client_mode, check) = match (mode.as_str(), root) {
        ("verify-full", Some(root)) => ("require", CertificateCheck::ChainAndName(root)),
        ("verify-ca", Some(root)) | ("require", Some(root)) => {
            ("require", CertificateCheck::Chain(root))
        }
        ("verify-full" | "verify-ca", None) => return Err(needs_root(&mode)),
        ("disable" | "prefer", Some(_)) => {
            return Err("sslrootcert needs sslmode=require, verify-ca or verify-full".into());
        }
        (other, None) => (other, CertificateCheck::None),
        (_, Some(_)) => {
            return Err("invalid value for option `sslmode` (disable, prefer, require, verify-ca or verify-full)".into());
        }
    };
    let mut client = format!("{base}?sslmode={client_mode}");
    for param in kept.iter().filter(|p| !p.is_empty()) {
        client.push('&');
        client.push_str(param);
    }
    Ok((client, check))
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
        assert!(ok("postgres://db/x?sslmode=verify-full&sslrootcert=/etc/ca.pem").is_ok());
        for bad in [
            "postgres://db/x?sslmode=verify-full",
            "postgres://db/x?sslmode=verify-ca",
            "postgres://db/x?sslmode=sometimes",
        ] {
            let err = ok(bad).unwrap_err();
            assert!(err.contains("sslmode"), "{bad}: {err}");
        }
        assert!(
            ok("postgres://db/x?sslrootcert=/etc/ca.pem")
                .unwrap_err()
                .contains("sslrootcert")
        );
        assert!(ok("postgres://db:notaport/x").is_err());
    }

    #[test]
    fn tls_parameters_become_a_certificate_check() {
        use super::{CertificateCheck, client_url};
        let split = |u: &str| client_url(u).unwrap();
        assert_eq!(
            split("postgres://db/x?user=a&sslmode=verify-full&sslrootcert=/ca.pem"),
            (
                "postgres://db/x?sslmode=require&user=a".to_owned(),
                CertificateCheck::ChainAndName("/ca.pem".into())
            )
        );
        assert_eq!(
            split("postgres://db/x?sslrootcert=/ca.pem&sslmode=require").1,
            CertificateCheck::Chain("/ca.pem".into())
        );
        assert_eq!(
            split("postgres://db/x?sslmode=require").1,
            CertificateCheck::None
        );
        assert_eq!(
            split("postgres://db/x"),
            ("postgres://db/x".to_owned(), CertificateCheck::None)
        );
    }
}
