//! The input side of `weir produce`: standard input read line by line on its own
//! thread (so acknowledgements keep flowing while a terminal waits for typing), each
//! line decoded by `--format` and checked by the rules of a record the topic accepts.
//!
//! A line that breaks a rule is a [`BadLine`]; what happens to it is `--on-bad-line`'s
//! choice, made by the caller. Lines are bytes: text lines need not be UTF-8.

use std::io::BufRead;

use bytes::Bytes;
use clap::ValueEnum;
use tokio::sync::mpsc;

/// Lines read ahead of the sender, at most.
const READ_AHEAD_LINES: usize = 1024;

/// `--format`: how a line of input becomes a record value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// The line's bytes as they are (without the line end; need not be UTF-8).
    Text,
    /// The line is the value in base64 (standard or URL-safe alphabet, padding
    /// optional; surrounding whitespace ignored).
    Base64,
    /// The line is the value in hexadecimal (either case; surrounding whitespace ignored).
    Hex,
}

/// One line of input as read.
#[derive(Debug)]
pub struct RawLine {
    /// 1-based line number.
    pub number: u64,
    /// The line without its `\n` (or `\r\n`); empty when `too_long`.
    pub bytes: Vec<u8>,
    /// The line was longer than the reader's limit; its bytes were dropped.
    pub too_long: Option<u64>,
}

/// Why a line is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine(pub String);

/// Starts the reader thread: lines of `input` (at most `max_line_bytes` kept per
/// line) arrive on the returned channel in order; a read error arrives as `Err` and
/// ends the stream. The thread ends at end of input or when the receiver is dropped.
pub fn spawn_reader(
    input: impl BufRead + Send + 'static,
    max_line_bytes: usize,
) -> mpsc::Receiver<std::io::Result<RawLine>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD_LINES);
    std::thread::spawn(move || {
        let mut input = input;
        let mut number = 0u64;
        loop {
            number += 1;
            let line = match read_line(&mut input, max_line_bytes) {
                Ok(Some((bytes, too_long))) => Ok(RawLine {
                    number,
                    bytes,
                    too_long,
                }),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// One line without its end: `None` at end of input; the bytes are dropped (and the
/// line's length returned) when it is longer than `max` bytes.
pub fn read_line(
    input: &mut impl BufRead,
    max: usize,
) -> std::io::Result<Option<(Vec<u8>, Option<u64>)>> {
    let mut line = Vec::new();
    let mut total = 0u64;
    let mut any = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        total += chunk.len() as u64;
        if total <= max as u64 {
            line.extend_from_slice(chunk);
        } else {
            line = Vec::new();
        }
        let ended = done > chunk.len();
        input.consume(done);
        if ended {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if total > max as u64 {
        return Ok(Some((Vec::new(), Some(total))));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some((line, None)))
}

/// The value a line stands for in `format`.
pub fn decode(format: InputFormat, line: Vec<u8>) -> Result<Bytes, BadLine> {
    match format {
        InputFormat::Text => Ok(Bytes::from(line)),
        InputFormat::Base64 => decode_base64(line.trim_ascii()).map(Bytes::from),
        InputFormat::Hex => decode_hex(line.trim_ascii()).map(Bytes::from),
    }
}

/// Field `n` (1-based) of `value` split on ASCII whitespace.
pub fn field(value: &[u8], n: usize) -> Result<Bytes, BadLine> {
    value
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .nth(n.saturating_sub(1))
        .map(Bytes::copy_from_slice)
        .ok_or_else(|| BadLine(format!("has no field {n} (--key-field)")))
}

fn decode_base64(s: &[u8]) -> Result<Vec<u8>, BadLine> {
    let data = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    if data.len() != s.len() && !s.len().is_multiple_of(4) {
        return Err(BadLine("is not base64: bad padding".into()));
    }
    if data.len() % 4 == 1 {
        return Err(BadLine("is not base64: wrong length".into()));
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, &c) in data.iter().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => {
                return Err(BadLine(format!(
                    "is not base64: byte {} is {c:#04x}",
                    i + 1
                )))
            }
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

fn decode_hex(s: &[u8]) -> Result<Vec<u8>, BadLine> {
    if !s.len().is_multiple_of(2) {
        return Err(BadLine("is not hex: odd number of digits".into()));
    }
    let digit = |i: usize| -> Result<u8, BadLine> {
        let c = s[i];
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(BadLine(format!("is not hex: byte {} is {c:#04x}", i + 1))),
        }
    };
    (0..s.len() / 2)
        .map(|i| -> Result<u8, BadLine> { Ok((digit(2 * i)? << 4) | digit(2 * i + 1)?) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<(Vec<u8>, Option<u64>)> {
        let mut r = std::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        while let Some(l) = read_line(&mut r, max).expect("read") {
            out.push(l);
        }
        out
    }

    #[test]
    fn lines_are_bytes_with_ends_removed_and_long_ones_flagged() {
        let got = lines(b"a\r\n\xff\xfe b\n\ntoo long line\nlast", 8);
        assert_eq!(
            got,
            vec![
                (b"a".to_vec(), None),
                (b"\xff\xfe b".to_vec(), None),
                (Vec::new(), None),
                (Vec::new(), Some(13)),
                (b"last".to_vec(), None),
            ]
        );
        assert!(lines(b"", 8).is_empty());
    }

    #[test]
    fn base64_and_hex_decode_or_say_why_not() {
        let b64 = |s: &str| decode(InputFormat::Base64, s.as_bytes().to_vec());
        assert_eq!(b64("aGVsbG8=").unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(b64(" aGVsbG8 ").unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(b64("AP8=").unwrap(), Bytes::from_static(b"\x00\xff"));
        assert_eq!(b64("AP-_").unwrap(), b64("AP+/").unwrap());
        assert!(b64("a").is_err());
        assert!(b64("aGVsbG8*").is_err());
        assert!(b64("aGVsbG=").is_err());
        let hex = |s: &str| decode(InputFormat::Hex, s.as_bytes().to_vec());
        assert_eq!(hex("00ffA1").unwrap(), Bytes::from_static(b"\x00\xff\xa1"));
        assert!(hex("0").is_err());
        assert!(hex("zz").is_err());
        assert_eq!(
            decode(InputFormat::Text, b"\xff x".to_vec()).unwrap(),
            Bytes::from_static(b"\xff x")
        );
    }

    #[test]
    fn key_fields_are_whitespace_separated() {
        assert_eq!(
            field(b"alice  paid 10", 2).unwrap(),
            Bytes::from_static(b"paid")
        );
        assert!(field(b"alice", 2).is_err());
    }
}
