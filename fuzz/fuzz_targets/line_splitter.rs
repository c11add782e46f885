//! The line splitter on arbitrary bytes in arbitrary pieces: the lines never depend on where the
//! reads split the stream, never hold a line ending, keep within the cap (plus the marker), and
//! a stream with no cut line comes back exactly (lossy UTF-8 aside).
#![no_main]

use agentnexus::executor::{Line, LineSplitter};
use libfuzzer_sys::fuzz_target;

const MARKER: &str = " … [line truncated: ";

fn split(pieces: &[&[u8]], max: usize) -> (Vec<Line>, u64) {
    let mut splitter = LineSplitter::new(max);
    let mut lines = Vec::new();
    for piece in pieces {
        splitter.push(piece, &mut lines);
    }
    lines.extend(splitter.finish());
    (lines, splitter.truncated_lines())
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    // A small cap makes cuts common; the first byte also picks where the reads split.
    let max = 1 + usize::from(head % 32);
    let step = 1 + usize::from(head / 32);
    let whole = split(&[rest], max);
    let pieces: Vec<&[u8]> = rest.chunks(step).collect();
    let chunked = split(&pieces, max);
    assert_eq!(
        whole, chunked,
        "the lines depend on how the stream was read"
    );

    let (lines, truncated) = whole;
    assert_eq!(
        truncated,
        lines.iter().filter(|l| l.truncated).count() as u64
    );
    for line in &lines {
        assert!(!line.text.contains('\n'), "{line:?}");
        let content = match line.text.find(MARKER) {
            Some(at) if line.truncated => &line.text[..at],
            _ => line.text.as_str(),
        };
        // Lossy decoding turns each bad sequence (1 to 3 bytes) into U+FFFD (3 bytes).
        let replacements = content.matches('\u{fffd}').count();
        assert!(
            content.len() <= max + 2 * replacements,
            "{} bytes over a cap of {max}: {line:?}",
            content.len()
        );
    }
    let ends = rest.iter().filter(|&&b| b == b'\n').count();
    let partial = usize::from(!rest.is_empty() && !rest.ends_with(b"\n"));
    assert_eq!(lines.len(), ends + partial);
    if truncated == 0 {
        let text = String::from_utf8_lossy(rest);
        let expected: Vec<&str> = text
            .strip_suffix('\n')
            .unwrap_or(&text)
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        if !rest.is_empty() {
            let got: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
            assert_eq!(got, expected);
        }
    }
});
