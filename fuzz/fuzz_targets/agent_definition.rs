//! An agent definition as the server reads it: the body of `POST /api/agents` (JSON, then the
//! checks every agent passes), or a configuration file (TOML, through the whole loader). Bad
//! input is an error, never a panic or a hang.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use agentnexus::api::AgentSpec;
use agentnexus::config::{self, Config, Overrides};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        if let Ok(spec) = serde_json::from_slice::<AgentSpec>(body) {
            let _ = config::validate_agent(&spec.into_agent(300));
        }
        return;
    }
    let path = scratch().path().join("agentnexus.toml");
    let mut file = std::fs::File::create(&path).expect("the scratch file opens");
    file.write_all(body).expect("the scratch file is written");
    drop(file);
    if let Ok(config) = Config::load(Some(&path), Overrides::default()) {
        for entry in &config.agents {
            assert!(
                config.agent(entry).is_ok(),
                "a loaded config holds valid agents"
            );
        }
    }
});
