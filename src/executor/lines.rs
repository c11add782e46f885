//! Splits an agent's output stream into log lines as they are written: lossy UTF-8 (bytes that
//! are not UTF-8 become U+FFFD, nothing is dropped), `\r\n` or `\n` endings, and lines longer
//! than the cap cut with a marker. Memory per stream stays bounded by the cap.

use tokio::io::{AsyncRead, AsyncReadExt};

const READ_CHUNK: usize = 64 * 1024;

pub struct LineReader<R> {
    reader: R,
    chunk: Vec<u8>,
    current: Vec<u8>,
    /// Bytes of the current line beyond the cap, counted rather than kept.
    overflow: usize,
    max_line_bytes: usize,
    eof: bool,
    truncated: u64,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(reader: R, max_line_bytes: usize) -> Self {
        LineReader {
            reader,
            chunk: vec![0; READ_CHUNK],
            current: Vec::new(),
            overflow: 0,
            max_line_bytes,
            eof: false,
            truncated: 0,
        }
    }

    /// The lines completed by the next read, or `None` at the end of the stream. A partial last
    /// line is delivered at the end.
    pub async fn next_lines(&mut self) -> std::io::Result<Option<Vec<String>>> {
        loop {
            if self.eof {
                return Ok(None);
            }
            let n = self.reader.read(&mut self.chunk).await?;
            let mut lines = Vec::new();
            if n == 0 {
                self.eof = true;
                if !self.current.is_empty() || self.overflow > 0 {
                    lines.push(self.finish_line());
                }
                return Ok(if lines.is_empty() { None } else { Some(lines) });
            }
            let mut start = 0;
            while let Some(offset) = self.chunk[start..n].iter().position(|&b| b == b'\n') {
                self.append(start, start + offset);
                lines.push(self.finish_line());
                start += offset + 1;
            }
            self.append(start, n);
            if !lines.is_empty() {
                return Ok(Some(lines));
            }
        }
    }

    /// The partial line read so far, for a reader that stops before the end of the stream.
    pub fn take_partial(&mut self) -> Option<String> {
        (!self.current.is_empty() || self.overflow > 0).then(|| self.finish_line())
    }

    /// How many lines so far were cut at the cap.
    pub fn truncated_lines(&self) -> u64 {
        self.truncated
    }

    /// Adds `chunk[from..to]` to the current line, within the cap.
    fn append(&mut self, from: usize, to: usize) {
        let room = self.max_line_bytes.saturating_sub(self.current.len());
        let keep = (to - from).min(room);
        self.current
            .extend_from_slice(&self.chunk[from..from + keep]);
        self.overflow += to - from - keep;
    }

    fn finish_line(&mut self) -> String {
        if self.overflow == 0 && self.current.last() == Some(&b'\r') {
            self.current.pop();
        }
        let bytes = std::mem::take(&mut self.current);
        let mut line = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        if self.overflow > 0 {
            self.truncated += 1;
            line.push_str(&format!(
                " … [line truncated: {} more bytes]",
                self.overflow
            ));
            self.overflow = 0;
        }
        line
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
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with(&"x".repeat(100)));
        assert!(
            lines[0].ends_with("[line truncated: 150 more bytes]"),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1], "next");
    }
}
