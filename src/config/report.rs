//! Configuration errors as a person reads them: the key as written in the file
//! (`agents[0].runtime.command`, not figment's internal `default.agents.0.runtime`) or the
//! environment variable, where it came from, the closest known key or value for a misspelt one
//! (as cargo and clap suggest), and nothing that could be a secret.

use figment::error::{Kind, OneOf};

/// Below this Jaro-Winkler similarity a known name is no suggestion.
const CLOSE: f64 = 0.8;

/// One of figment's errors, told as described above.
pub fn describe(mut e: figment::Error) -> String {
    hide_secrets(&mut e);
    let key = key(&e);
    let message = match &e.kind {
        Kind::UnknownField(found, known) => {
            let key = key.unwrap_or_else(|| found.clone());
            format!("unknown key `{key}`{}", hint(found, known))
        }
        Kind::UnknownVariant(found, known) => {
            let value = format!("unknown value `{found}`{}", hint(found, known));
            match key {
                Some(key) => format!("`{key}`: {value}"),
                None => value,
            }
        }
        kind => match key {
            Some(key) => format!("`{key}`: {kind}"),
            None => kind.to_string(),
        },
    };
    let source = match &e.metadata {
        Some(md) if env_prefix(md).is_some() => " (in the environment)".to_owned(),
        Some(md) => match &md.source {
            // The path as the user gave it: figment's own display shortens it relative to the
            // working directory, which then depends on where `serve` was started.
            Some(figment::Source::File(path)) => {
                format!(" (in {} {})", path.display(), md.name)
            }
            Some(source) => format!(" (in {source} {})", md.name),
            None => format!(" (in {})", md.name),
        },
        None => String::new(),
    };
    without_quoted_lines(&format!("{message}{source}"))
}

/// The key of the error: an environment variable's name, or the path in the file with array
/// indices in brackets. For an unknown key, the key itself (figment names only its table
/// when the table is an agent's runtime).
fn key(e: &figment::Error) -> Option<String> {
    let mut path = e.path.clone();
    if let Kind::UnknownField(found, _) = &e.kind {
        if path.last() != Some(found) {
            path.push(found.clone());
        }
    }
    if path.is_empty() {
        return None;
    }
    // The environment provider names the variable (without its prefix); every file and
    // default names the profile first, which no one wrote.
    if let (Some(md), Some(profile)) = (&e.metadata, &e.profile) {
        if let Some(prefix) = env_prefix(md) {
            return Some(format!("{prefix}{}", md.interpolate(profile, &path)));
        }
    }
    let mut key = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            key += &format!("[{part}]");
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key += &part;
        }
    }
    Some(key)
}

/// The prefix of the environment variables a value came from, if it came from there: figment
/// names that source "`AGENTNEXUS_` environment variable(s)".
fn env_prefix(md: &figment::Metadata) -> Option<&str> {
    md.name
        .strip_suffix("` environment variable(s)")?
        .strip_prefix('`')
}

/// `; did you mean `x`?` for the closest known name, else the list of known names.
fn hint(found: &str, known: &'static [&'static str]) -> String {
    match closest(found, known) {
        Some(close) => format!("; did you mean `{close}`?"),
        None if known.is_empty() => String::new(),
        None => format!("; expected {}", OneOf(known)),
    }
}

/// The known name most like `found`, if any is alike enough.
pub fn closest<'a>(found: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|name| (strsim::jaro_winkler(found, name), *name))
        .filter(|(similarity, _)| *similarity >= CLOSE)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
}

/// An `api_keys` entry's value is never repeated, whatever was wrong with it.
fn hide_secrets(e: &mut figment::Error) {
    if e.path.iter().any(|p| p == "api_keys") {
        let kind = std::mem::replace(&mut e.kind, Kind::Message(String::new()));
        e.kind = match kind {
            Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) => {
                Kind::Message(format!("invalid value, expected {expected}"))
            }
            kind => kind,
        };
    }
}

/// Without the parser's quote of the offending line (numbered lines starting with `|`): it may
/// hold an API key or an agent's credentials.
fn without_quoted_lines(message: &str) -> String {
    message
        .lines()
        .filter(|l| {
            !l.trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start()
                .starts_with('|')
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::load_str;

    fn error_of(toml: &str) -> String {
        let err = load_str(toml).unwrap_err().to_string();
        assert!(!err.contains("default."), "{err}");
        assert!(err.contains("agentnexus.toml TOML file"), "{err}");
        err
    }

    #[test]
    fn keys_are_named_as_written_in_the_file() {
        for (toml, key) in [
            (
                "max_concurrent_executions = \"many\"",
                "`max_concurrent_executions`: invalid type",
            ),
            (
                "[websocket]\nheartbeat_interval_ms = \"x\"",
                "`websocket.heartbeat_interval_ms`: invalid type",
            ),
            (
                "[[agents]]\nid = \"a\"\nname = \"A\"\nprice_wei = \"1\"\ntimeout_secs = -1\nruntime = { type = \"process\", command = \"x\" }",
                "`agents[0].timeout_secs`: invalid value",
            ),
        ] {
            let err = error_of(toml);
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn a_misspelt_key_or_value_gets_the_close_match() {
        for (toml, expected) in [
            (
                "max_concurent_executions = 3",
                "unknown key `max_concurent_executions`; did you mean `max_concurrent_executions`?",
            ),
            (
                "[logs]\nmax_line_byte = 100",
                "unknown key `logs.max_line_byte`; did you mean `max_line_bytes`?",
            ),
            (
                "[[agents]]\nid = \"a\"\nnmae = \"A\"\nprice_wei = \"1\"\nruntime = { type = \"process\", command = \"x\" }",
                "unknown key `agents[0].nmae`; did you mean `name`?",
            ),
            (
                "[[agents]]\nid = \"a\"\nname = \"A\"\nprice_wei = \"1\"\nruntime = { type = \"process\", comand = \"x\" }",
                "unknown key `agents[0].runtime.comand`; did you mean `command`?",
            ),
            (
                "containment = \"subreper\"",
                "`containment`: unknown value `subreper`; did you mean `subreaper`?",
            ),
        ] {
            let err = error_of(toml);
            assert!(err.contains(expected), "{toml}: {err}");
        }
    }

    #[test]
    fn a_key_like_no_other_gets_the_list_of_keys() {
        let err = error_of("[health]\nzzz = 1");
        assert!(
            err.contains("unknown key `health.zzz`; expected one of `check_timeout_ms`, "),
            "{err}"
        );
    }

    #[test]
    fn the_closest_known_name_is_suggested_only_when_close() {
        let known = ["bind", "max_concurrent_executions", "logs", "kill_grace_ms"];
        assert_eq!(closest("bnd", &known), Some("bind"));
        assert_eq!(
            closest("max_concurrent", &known),
            Some("max_concurrent_executions")
        );
        assert_eq!(closest("kill_grace", &known), Some("kill_grace_ms"));
        assert_eq!(closest("colour", &known), None);
    }
}
