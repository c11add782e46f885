//! What a WebSocket client sends, as the server reads it: any text either parses or is refused
//! with a message, never a panic; what parses reads the same after being written back.
#![no_main]

use agentnexus::api::ws::protocol::ClientMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMessage::parse(text) {
        Ok(message) => {
            let again = ClientMessage::parse(&message.to_text());
            assert_eq!(again.as_ref(), Ok(&message), "{text:?}");
        }
        Err(problem) => assert!(!problem.is_empty()),
    }
});
