//! API keys: where they come from and how they are held.
//!
//! Keys are read from the config file's `[[api_keys]]`, from the file `api_keys_file` names (a
//! mounted Kubernetes Secret) and from the `AGENTNEXUS_API_KEYS` environment variable — the
//! latter two hold the same TOML `[[api_keys]]` tables — and all of them are in force together.
//! A key is written in clear or as `sha256:` and the 64 hex digits of its SHA-256 digest. The
//! server keeps only digests and finds a presented key by its digest, so comparing takes the
//! same time whatever the presented key shares with a real one. No error message and no `Debug`
//! output shows a key: errors from a key source name the source, the entry and the line only.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ConfigError;

/// The environment variable that may hold `[[api_keys]]` tables.
pub const KEYS_ENV: &str = "AGENTNEXUS_API_KEYS";

const HASH_PREFIX: &str = "sha256:";

/// An API key and the user it stands for.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The key in clear (at least 16 characters), or `sha256:<64 hex digits>` of it.
    pub key: String,
    pub user: String,
    #[serde(default)]
    pub admin: bool,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("key", &"<redacted>")
            .field("user", &self.user)
            .field("admin", &self.admin)
            .finish()
    }
}

/// The SHA-256 digest of a key: all the server keeps of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    pub fn of(token: &str) -> KeyDigest {
        KeyDigest(Sha256::digest(token.as_bytes()).into())
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(<redacted>)")
    }
}

impl ApiKey {
    /// The digest of the key, whichever way it is written.
    pub fn digest(&self) -> Result<KeyDigest, String> {
        if self.user.trim().is_empty() {
            return Err("user must not be empty".into());
        }
        match self.key.strip_prefix(HASH_PREFIX) {
            Some(hex) => {
                let mut digest = [0; 32];
                match hex::decode_to_slice(hex, &mut digest) {
                    Ok(()) => Ok(KeyDigest(digest)),
                    Err(_) => Err(format!(
                        "a key written as {HASH_PREFIX}… must be followed by the 64 hex digits of \
                         the key's SHA-256 digest (printf %s KEY | sha256sum)"
                    )),
                }
            }
            None if self.key.chars().count() < 16 => {
                Err("a key must be at least 16 characters".into())
            }
            None => Ok(KeyDigest::of(&self.key)),
        }
    }
}

/// Keys checked source by source, so that an error names where the bad entry is.
#[derive(Default)]
pub(super) struct KeyRing {
    keys: Vec<ApiKey>,
    seen: HashSet<KeyDigest>,
}

impl KeyRing {
    pub(super) fn add(&mut self, source: &str, keys: Vec<ApiKey>) -> Result<(), ConfigError> {
        for (i, key) in keys.into_iter().enumerate() {
            let digest = key
                .digest()
                .map_err(|e| ConfigError::Invalid(format!("{source}: api_keys[{i}]: {e}")))?;
            if !self.seen.insert(digest) {
                return Err(ConfigError::Invalid(format!(
                    "{source}: api_keys[{i}]: this key is configured twice"
                )));
            }
            self.keys.push(key);
        }
        Ok(())
    }

    pub(super) fn into_keys(self) -> Vec<ApiKey> {
        self.keys
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    api_keys: Vec<ApiKey>,
}

/// The `[[api_keys]]` of a key file. A file that is missing or unreadable is an error: a
/// server meant to be protected must not start open.
pub(super) fn from_file(path: &Path) -> Result<Vec<ApiKey>, ConfigError> {
    let source = format!("api_keys_file {}", path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("{source}: cannot read it: {e}")))?;
    parse(&text, &source)
}

/// The `[[api_keys]]` in `AGENTNEXUS_API_KEYS`, if it is set.
pub(super) fn from_env() -> Result<Vec<ApiKey>, ConfigError> {
    match std::env::var(KEYS_ENV) {
        Ok(text) => parse(&text, KEYS_ENV),
        Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ConfigError::Invalid(format!("{KEYS_ENV}: not valid UTF-8")))
        }
    }
}

fn parse(text: &str, source: &str) -> Result<Vec<ApiKey>, ConfigError> {
    toml::from_str::<KeyFile>(text)
        .map(|file| file.api_keys)
        .map_err(|e| {
            // The parser's own message may quote the text around the error: a key.
            let line = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|before| before.matches('\n').count() + 1);
            let at = line.map_or(String::new(), |l| format!(" at line {l}"));
            ConfigError::Invalid(format!(
                "{source}: not valid TOML [[api_keys]] tables{at}: {}",
                redact_quoted(e.message())
            ))
        })
}

/// `invalid type: string "abc", expected a boolean` → `invalid type: string "…", expected …`.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('"');
        out.push_str(if i % 2 == 0 { "…" } else { part });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key: &str) -> ApiKey {
        ApiKey {
            key: key.into(),
            user: "u".into(),
            admin: false,
        }
    }

    #[test]
    fn a_hashed_key_and_its_clear_text_have_the_same_digest() {
        let clear = "a-long-enough-secret-key";
        let hex = hex::encode(Sha256::digest(clear.as_bytes()));
        assert_eq!(key(&format!("sha256:{hex}")).digest(), key(clear).digest());
        assert_eq!(
            key(&format!("sha256:{}", hex.to_uppercase())).digest(),
            key(clear).digest()
        );
        assert!(key("sha256:abc").digest().is_err());
        assert!(key(&format!("sha256:{hex}0")).digest().is_err());
        assert!(key("short").digest().is_err());
    }

    #[test]
    fn nothing_shows_a_key() {
        let secret = "do-not-show-me-0123456789";
        let shown = format!("{:?} {:?}", key(secret), KeyDigest::of(secret));
        assert!(!shown.contains(secret), "{shown}");
        for text in [
            format!("[[api_keys]]\nkey = \"{secret}\nuser = \"u\""),
            format!("[[api_keys]]\nkey = \"{secret}\"\nuser = \"u\"\nadmin = \"{secret}\""),
            format!("[[api_keys]]\nkey = [\"{secret}\"]\nuser = \"u\""),
            secret.to_owned(),
        ] {
            let err = parse(&text, "src").unwrap_err().to_string();
            assert!(!err.contains(secret), "{err}");
            assert!(err.contains("src: "), "{err}");
        }
    }
}
