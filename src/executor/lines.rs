//! Splits an agent's output stream into log lines as they are written: lossy UTF-8 (bytes that
//! are not UTF-8 become U+FFFD, nothing is dropped), `\r\n` or `\n` endings, and lines longer
//! than the cap cut with a marker. Memory per stream stays bounded by the cap.
//!
//! The cap counts a line's content only: its ending never counts, whether the `\r` and the `\n`
//! arrive in one read or two. A cut never splits a character: it falls on the last character
//! boundary within the cap, and the bytes of a character that straddles the cap are counted
//! with the rest as cut. (A byte sequence that is not UTF-8 counts as one character, the way it
//! becomes one U+FFFD.)

use tokio::io::{AsyncRead, AsyncReadExt};

const READ_CHUNK: usize = 64 * 1024;
/// The longest UTF-8 encoding of a character: keeping this many bytes minus one past the cap
/// shows whether the character at the cap ends within it.
const MAX_CHAR_BYTES: usize = 4;

/// One log line as split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    /// Cut at the cap (the text ends with the marker).
    pub truncated: bool,
}

/// Splits bytes pushed in arbitrary pieces into lines.
pub struct LineSplitter {
    /// The current line's content so far, kept up to `MAX_CHAR_BYTES - 1` bytes past the cap.
    current: Vec<u8>,
    /// Content bytes of the current line beyond those kept, counted rather than kept.
    overflow: usize,
    /// The previous piece ended in `\r`: the start of a `\r\n`, or content if no `\n` follows.
    pending_cr: bool,
    max_line_bytes: usize,
    truncated: u64,
}

impl LineSplitter {
    pub fn new(max_line_bytes: usize) -> LineSplitter {
        LineSplitter {
            current: Vec::new(),
            overflow: 0,
            pending_cr: false,
            max_line_bytes,
            truncated: 0,
        }
    }

    /// Adds the next bytes of the stream; appends the lines they complete to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Line>) {
        if bytes.is_empty() {
            return;
        }
        if std::mem::take(&mut self.pending_cr) && bytes[0] != b'\n' {
            // A `\r` not followed by `\n` is part of the line.
            self.take(b"\r");
        }
        while let Some(at) = bytes.iter().position(|&b| b == b'\n') {
            let content = &bytes[..at];
            self.take(content.strip_suffix(b"\r").unwrap_or(content));
            out.push(self.end_line());
            bytes = &bytes[at + 1..];
        }
        match bytes.strip_suffix(b"\r") {
            Some(rest) => {
                self.take(rest);
                self.pending_cr = true;
            }
            None => self.take(bytes),
        }
    }

    /// The end of the stream: the unterminated last line, if there is one. A final `\r` is
    /// taken for the start of a line ending the stream cut short.
    pub fn finish(&mut self) -> Option<Line> {
        let had_cr = std::mem::take(&mut self.pending_cr);
        (had_cr || !self.current.is_empty() || self.overflow > 0).then(|| self.end_line())
    }

    /// How many lines so far were cut at the cap.
    pub fn truncated_lines(&self) -> u64 {
        self.truncated
    }

    /// Adds content to the current line, keeping what the cut may need.
    fn take(&mut self, content: &[u8]) {
        let limit = self.max_line_bytes + MAX_CHAR_BYTES - 1;
        let keep = content.len().min(limit.saturating_sub(self.current.len()));
        self.current.extend_from_slice(&content[..keep]);
        self.overflow += content.len() - keep;
    }

    fn end_line(&mut self) -> Line {
        let bytes = std::mem::take(&mut self.current);
        let kept = if bytes.len() > self.max_line_bytes {
            boundary_within(&bytes, self.max_line_bytes)
        } else {
            bytes.len()
        };
        let cut = bytes.len() - kept + std::mem::take(&mut self.overflow);
        let mut text = match std::str::from_utf8(&bytes[..kept]) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(&bytes[..kept]).into_owned(),
        };
        if cut > 0 {
            self.truncated += 1;
            text.push_str(&format!(" … [line truncated: {cut} more bytes]"));
        }
        Line {
            text,
            truncated: cut > 0,
        }
    }
}

/// The longest prefix of `bytes` of at most `max` bytes that ends on a character boundary,
/// where a sequence that is not UTF-8 counts as one character.
fn boundary_within(bytes: &[u8], max: usize) -> usize {
    let mut at = 0;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if at + c.len_utf8() > max {
                return at;
            }
            at += c.len_utf8();
        }
        let invalid = chunk.invalid().len();
        if at + invalid > max {
            return at;
        }
        at += invalid;
    }
    at
}

/// Reads a stream and splits it into lines.
pub struct LineReader<R> {
    reader: R,
    chunk: Vec<u8>,
    splitter: LineSplitter,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(reader: R, max_line_bytes: usize) -> Self {
        LineReader {
            reader,
            chunk: vec![0; READ_CHUNK],
            splitter: LineSplitter::new(max_line_bytes),
            eof: false,
        }
    }

    /// The lines completed by the next read, or `None` at the end of the stream. A partial last
    /// line is delivered at the end.
    pub async fn next_lines(&mut self) -> std::io::Result<Option<Vec<String>>> {
        let mut lines = Vec::new();
        while lines.is_empty() {
            if self.eof {
                return Ok(None);
            }
            let n = self.reader.read(&mut self.chunk).await?;
            if n == 0 {
                self.eof = true;
                lines.extend(self.splitter.finish());
            } else {
                self.splitter.push(&self.chunk[..n], &mut lines);
            }
        }
        Ok(Some(lines.into_iter().map(|l| l.text).collect()))
    }

    /// The partial line read so far, for a reader that stops before the end of the stream.
    pub fn take_partial(&mut self) -> Option<String> {
        self.splitter.finish().map(|line| line.text)
    }

    /// How many lines so far were cut at the cap.
    pub fn truncated_lines(&self) -> u64 {
        self.splitter.truncated_lines()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn split(input: &[u8], max: usize) -> Vec<String> {
        let mut reader = LineReader::new(input, max);
        let mut all = Vec::new();
        while let Some(lines) = reader.next_lines().await.unwrap() {
            all.extend(lines);
        }
        all
    }

    /// Splits `pieces` pushed one by one: the same lines whatever the read boundaries.
    fn split_pieces(pieces: &[&[u8]], max: usize) -> (Vec<String>, u64) {
        let mut splitter = LineSplitter::new(max);
        let mut lines = Vec::new();
        for piece in pieces {
            splitter.push(piece, &mut lines);
        }
        lines.extend(splitter.finish());
        let truncated = lines.iter().filter(|l| l.truncated).count() as u64;
        assert_eq!(truncated, splitter.truncated_lines());
        (lines.into_iter().map(|l| l.text).collect(), truncated)
    }

    /// Every way of cutting `input` in two pieces gives `expected`.
    fn at_every_boundary(input: &[u8], max: usize, expected: &[&str]) {
        for at in 0..=input.len() {
            let (lines, _) = split_pieces(&[&input[..at], &input[at..]], max);
            assert_eq!(lines, expected, "split after byte {at} of {input:?}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(split_pieces(&bytes, max).0, expected, "byte by byte");
    }

    fn marked(content: &str, more: usize) -> String {
        format!("{content} … [line truncated: {more} more bytes]")
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_partial_last_line() {
        assert_eq!(split(b"a\r\nb\n\nc", 100).await, ["a", "b", "", "c"]);
        assert!(split(b"", 100).await.is_empty());
    }

    #[tokio::test]
    async fn invalid_utf8_is_kept_lossily() {
        assert_eq!(
            split(b"ok \xff\xfe end\n", 100).await,
            ["ok \u{fffd}\u{fffd} end"]
        );
    }

    #[tokio::test]
    async fn long_lines_are_cut_with_a_marker() {
        let long = format!("{}\nnext\n", "x".repeat(250));
        let lines = split(long.as_bytes(), 100).await;
        assert_eq!(lines, [marked(&"x".repeat(100), 150), "next".to_owned()]);
    }

    #[test]
    fn a_line_ending_never_counts_against_the_cap() {
        let x8 = "x".repeat(8);
        for input in ["xxxxxxxx\r\nnext\n", "xxxxxxxx\nnext\n"] {
            at_every_boundary(input.as_bytes(), 8, &[&x8, "next"]);
        }
        // Unterminated, and cut short after its `\r`.
        at_every_boundary(b"xxxxxxxx", 8, &[&x8]);
        at_every_boundary(b"xxxxxxxx\r", 8, &[&x8]);
        let (_, truncated) = split_pieces(&[b"xxxxxxxx\r", b"\nxxxxxxxx\r\n"], 8);
        assert_eq!(truncated, 0);
    }

    #[test]
    fn a_carriage_return_without_a_newline_is_content() {
        at_every_boundary(b"a\rb\r\r\nc\n", 100, &["a\rb\r", "c"]);
        // At the cap it is content over the cap, whichever read it arrives in.
        let over = marked(&"x".repeat(8), 1);
        at_every_boundary(b"xxxxxxxx\ry\n", 8, &[&marked(&"x".repeat(8), 2)]);
        at_every_boundary(b"xxxxxxxx\r\rn\n", 8, &[&marked(&"x".repeat(8), 3)]);
        let (lines, _) = split_pieces(&[b"xxxxxxxx\r", b"\r\n"], 8);
        assert_eq!(lines, [over]);
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let x7 = "x".repeat(7);
        // A 2-byte character across the cap of 8: the whole character is cut.
        at_every_boundary("xxxxxxxé\n".as_bytes(), 8, &[&marked(&x7, 2)]);
        // A 4-byte character, across the cap at each of its three inner boundaries.
        for before in 5..=7 {
            let line = format!("{}😀tail\r\n", "x".repeat(before));
            let expected = marked(&"x".repeat(before), 4 + 4);
            at_every_boundary(line.as_bytes(), 8, &[&expected]);
        }
        // Ending exactly at the cap it is kept whole.
        at_every_boundary("xxxx😀\r\n".as_bytes(), 8, &["xxxx😀"]);
        at_every_boundary("xxxx😀y".as_bytes(), 8, &[&marked("xxxx😀", 1)]);
        let lines = split_pieces(&["é".repeat(100).as_bytes()], 9).0;
        assert_eq!(lines, [marked(&"é".repeat(4), 192)]);
        assert!(!lines[0].contains('\u{fffd}'));
    }

    #[test]
    fn invalid_bytes_at_the_cap_are_what_the_agent_wrote() {
        let x7 = "x".repeat(7);
        // A byte that is not UTF-8 within the cap is kept (as U+FFFD); the next one is cut.
        at_every_boundary(
            b"xxxxxxx\xff\xfe\n",
            8,
            &[&marked(&format!("{x7}\u{fffd}"), 1)],
        );
        // A lone lead byte before an ASCII byte is not a character that continues.
        at_every_boundary(
            b"xxxxxxx\xe9a\n",
            8,
            &[&marked(&format!("{x7}\u{fffd}"), 1)],
        );
        // An incomplete sequence across the cap is one unit: cut whole.
        at_every_boundary(b"xxxxxxx\xf0\x9f\x98\n", 8, &[&marked(&x7, 3)]);
        // Exactly at the cap, an invalid byte is simply kept.
        at_every_boundary(b"xxxxxxx\xff\r\n", 8, &[&format!("{x7}\u{fffd}")]);
    }

    #[test]
    fn the_reported_inputs_at_the_default_cap() {
        const CAP: usize = 16 * 1024;
        let exact = format!("{}\r\n", "x".repeat(CAP));
        let (lines, truncated) = split_pieces(&[exact.as_bytes()], CAP);
        assert_eq!(lines, ["x".repeat(CAP)]);
        assert_eq!(truncated, 0);
        let accented = format!("{}é\n", "x".repeat(CAP - 1));
        let (lines, truncated) = split_pieces(&[accented.as_bytes()], CAP);
        assert_eq!(lines, [marked(&"x".repeat(CAP - 1), 2)]);
        assert_eq!(truncated, 1);
    }
}
