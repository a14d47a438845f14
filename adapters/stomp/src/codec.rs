//! The STOMP 1.2 wire codec, on `tokio-util`'s [`Decoder`] and [`Encoder`].
//!
//! - A frame is `COMMAND EOL (name:value EOL)* EOL body NUL`, where EOL is LF or CR LF.
//! - Header names and values are escaped (`\\` `\n` `\r` `\c`) in every frame except
//!   `CONNECT` and `CONNECTED`, as the specification says; an undefined escape is an error.
//! - A body is `content-length` bytes followed by a NUL when the header is present (so a
//!   body may contain NUL), else everything up to the first NUL. The encoder always writes
//!   `content-length` for a non-empty body.
//! - EOLs between frames are heart-beats and decode as [`Item::Heartbeat`].
//! - A frame larger than the configured limit (head and body) is a
//!   [`CodecError::TooLarge`] as soon as that is known, without buffering the rest.
//!
//! The decoder keeps how far it has searched, so a frame arriving one byte at a time costs
//! linear, not quadratic, time.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{escape, unescape, Frame};

/// Default limit on one incoming frame: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// What travels on a STOMP connection: frames and heart-beats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A heart-beat (an EOL between frames).
    Heartbeat,
    /// A frame.
    Frame(Frame),
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The connection failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame is larger than the limit.
    #[error("a frame of at least {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes known so far.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid STOMP 1.2 frame (or a frame cannot be written as one).
    #[error("malformed STOMP frame: {0}")]
    Malformed(String),
}

#[derive(Debug)]
enum State {
    /// Waiting for the end of a frame's head; `scanned` bytes need not be searched again.
    Head { scanned: usize },
    /// The head is parsed; waiting for the body.
    Body {
        frame: Frame,
        head_len: usize,
        content_length: Option<usize>,
        scanned: usize,
    },
}

/// The STOMP 1.2 codec.
#[derive(Debug)]
pub struct StompCodec {
    max_frame: usize,
    state: State,
}

impl StompCodec {
    /// A codec refusing incoming frames larger than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        StompCodec {
            max_frame,
            state: State::Head { scanned: 0 },
        }
    }
}

impl Default for StompCodec {
    fn default() -> Self {
        StompCodec::new(DEFAULT_MAX_FRAME)
    }
}

fn malformed(reason: impl Into<String>) -> CodecError {
    CodecError::Malformed(reason.into())
}

/// Where the blank line ending a head is: `(end of the last header line, start of body)`.
fn find_head_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some((nl, nl + 2)),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some((nl, nl + 3)),
            _ => i = nl + 1,
        }
    }
    None
}

fn parse_head(head: &[u8]) -> Result<(Frame, Option<usize>), CodecError> {
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let command = lines.next().unwrap_or_default();
    if command.is_empty() || !command.iter().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed(format!(
            "invalid command {:?}",
            String::from_utf8_lossy(&command[..command.len().min(40)])
        )));
    }
    let command = String::from_utf8_lossy(command).into_owned();
    let escaped = Frame::escapes_headers(&command);
    let mut frame = Frame::new(command);
    let mut content_length = None;
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(malformed(format!(
                "a header line of {} has no colon: {:?}",
                frame.command,
                String::from_utf8_lossy(&line[..line.len().min(80)])
            )));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (name, value) = if escaped {
            (unescape(name), unescape(value))
        } else {
            let text = |b: &[u8]| {
                String::from_utf8(b.to_vec()).map_err(|_| "a header is not valid UTF-8".to_owned())
            };
            (text(name), text(value))
        };
        let (name, value) = (name.map_err(malformed)?, value.map_err(malformed)?);
        if name == "content-length" && content_length.is_none() {
            content_length =
                Some(value.trim().parse::<usize>().map_err(|_| {
                    malformed(format!("content-length {value:?} is not a byte count"))
                })?);
        }
        frame.headers.push((name, value));
    }
    Ok((frame, content_length))
}

impl Decoder for StompCodec {
    type Item = Item;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, CodecError> {
        loop {
            match &mut self.state {
                State::Head { scanned } => {
                    if *scanned == 0 {
                        match buf.first() {
                            None => return Ok(None),
                            Some(b'\n') => {
                                buf.advance(1);
                                return Ok(Some(Item::Heartbeat));
                            }
                            Some(b'\r') => match buf.get(1) {
                                None => return Ok(None),
                                Some(b'\n') => {
                                    buf.advance(2);
                                    return Ok(Some(Item::Heartbeat));
                                }
                                Some(_) => return Err(malformed("a CR not followed by LF")),
                            },
                            Some(_) => {}
                        }
                    }
                    let Some((head_end, body_start)) = find_head_end(buf, *scanned) else {
                        if buf.len() > self.max_frame {
                            return Err(CodecError::TooLarge {
                                size: buf.len(),
                                limit: self.max_frame,
                            });
                        }
                        // The last two bytes may begin the blank line.
                        *scanned = buf.len().saturating_sub(2);
                        return Ok(None);
                    };
                    let (frame, content_length) = parse_head(&buf[..head_end])?;
                    if let Some(n) = content_length {
                        // A peer-given length near usize::MAX must not overflow the sum.
                        let size = body_start.saturating_add(n);
                        if size > self.max_frame || size == usize::MAX {
                            return Err(CodecError::TooLarge {
                                size,
                                limit: self.max_frame,
                            });
                        }
                    }
                    buf.advance(body_start);
                    self.state = State::Body {
                        frame,
                        head_len: body_start,
                        content_length,
                        scanned: 0,
                    };
                }
                State::Body {
                    head_len,
                    content_length,
                    scanned,
                    ..
                } => {
                    let body_len = match *content_length {
                        Some(n) => {
                            if buf.len() <= n {
                                // n < usize::MAX (checked above); reserve a bounded step,
                                // not a peer-chosen amount all at once.
                                buf.reserve((n + 1 - buf.len()).min(1 << 20));
                                return Ok(None);
                            }
                            if buf[n] != 0 {
                                return Err(malformed(format!(
                                    "the {n} body bytes given by content-length are not followed by NUL"
                                )));
                            }
                            n
                        }
                        None => match buf[*scanned..].iter().position(|b| *b == 0) {
                            Some(p) => *scanned + p,
                            None => {
                                if *head_len + buf.len() > self.max_frame {
                                    return Err(CodecError::TooLarge {
                                        size: *head_len + buf.len(),
                                        limit: self.max_frame,
                                    });
                                }
                                *scanned = buf.len();
                                return Ok(None);
                            }
                        },
                    };
                    if *head_len + body_len > self.max_frame {
                        return Err(CodecError::TooLarge {
                            size: *head_len + body_len,
                            limit: self.max_frame,
                        });
                    }
                    let body = buf.split_to(body_len).freeze();
                    buf.advance(1);
                    let State::Body { mut frame, .. } =
                        std::mem::replace(&mut self.state, State::Head { scanned: 0 })
                    else {
                        return Err(malformed("decoder state lost"));
                    };
                    frame.body = body;
                    return Ok(Some(Item::Frame(frame)));
                }
            }
        }
    }
}

impl Encoder<Item> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Item, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Item::Heartbeat => {
                dst.put_u8(b'\n');
                Ok(())
            }
            Item::Frame(frame) => encode_frame(&frame, dst),
        }
    }
}

impl Encoder<Frame> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&frame, dst)
    }
}

fn encode_frame(frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
    if frame.command.is_empty() || !frame.command.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed(format!("invalid command {:?}", frame.command)));
    }
    let escaped = Frame::escapes_headers(&frame.command);
    let mut out = Vec::with_capacity(64 + frame.headers.len() * 32);
    out.extend_from_slice(frame.command.as_bytes());
    out.push(b'\n');
    let mut has_length = false;
    for (name, value) in &frame.headers {
        if name == "content-length" {
            if value.trim().parse::<usize>().ok() != Some(frame.body.len()) {
                return Err(malformed(format!(
                    "content-length {value:?} does not match the body of {} bytes",
                    frame.body.len()
                )));
            }
            has_length = true;
        }
        if escaped {
            escape(name, &mut out);
            out.push(b':');
            escape(value, &mut out);
        } else {
            if name.contains(['\n', '\r', ':']) || value.contains(['\n', '\r']) {
                return Err(malformed(format!(
                    "the {} header {name:?} cannot be sent: {} headers are not escaped",
                    frame.command, frame.command
                )));
            }
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    }
    if !has_length && !frame.body.is_empty() {
        out.extend_from_slice(format!("content-length:{}\n", frame.body.len()).as_bytes());
    }
    out.push(b'\n');
    dst.reserve(out.len() + frame.body.len() + 1);
    dst.put_slice(&out);
    dst.put_slice(&frame.body);
    dst.put_u8(0);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn encode(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        StompCodec::default()
            .encode(frame.clone(), &mut buf)
            .expect("encode");
        buf
    }

    fn decode_all(codec: &mut StompCodec, buf: &mut BytesMut) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some(item) = codec.decode(buf).expect("decode") {
            items.push(item);
        }
        items
    }

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::new("SEND")
                .with_header("destination", "/queue/a")
                .with_header("receipt", "r1")
                .with_body(Bytes::from_static(b"hello")),
            Frame::new("MESSAGE")
                .with_header("weird:name", "value:with\\colons\nand\rbreaks")
                .with_header("dup", "1")
                .with_header("dup", "2")
                .with_header("unicode", "ünïcødé ✓ 日本")
                .with_body(vec![0u8, 0xff, 0, b'\n', 0]),
            Frame::new("RECEIPT").with_header("receipt-id", "77"),
            Frame::new("CONNECT")
                .with_header("accept-version", "1.2")
                .with_header("login", "back\\slash"),
            Frame::new("ERROR")
                .with_header("message", "bad")
                .with_body("details\n"),
            Frame::new("DISCONNECT"),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in sample_frames() {
            let mut buf = encode(&frame);
            let mut codec = StompCodec::default();
            let mut items = decode_all(&mut codec, &mut buf);
            let Some(Item::Frame(mut got)) = items.pop() else {
                panic!("no frame for {frame:?}");
            };
            assert!(items.is_empty() && buf.is_empty());
            // The encoder adds content-length to a non-empty body.
            if !frame.body.is_empty() {
                let (n, v) = got.headers.pop().unwrap();
                assert_eq!(
                    (n.as_str(), v),
                    ("content-length", frame.body.len().to_string())
                );
            }
            assert_eq!(got, frame);
        }
    }

    #[test]
    fn partial_reads_split_at_every_byte() {
        let mut wire = BytesMut::new();
        for f in sample_frames() {
            wire.extend_from_slice(&encode(&f));
            wire.extend_from_slice(b"\r\n\n");
        }
        let expected = {
            let mut all = wire.clone();
            decode_all(&mut StompCodec::default(), &mut all)
        };
        assert_eq!(
            expected.iter().filter(|i| **i == Item::Heartbeat).count(),
            2 * sample_frames().len()
        );
        for split in 0..wire.len() {
            let mut codec = StompCodec::default();
            let mut buf = BytesMut::from(&wire[..split]);
            let mut got = decode_all(&mut codec, &mut buf);
            buf.extend_from_slice(&wire[split..]);
            got.extend(decode_all(&mut codec, &mut buf));
            assert_eq!(got, expected, "split at {split}");
        }
        // One byte at a time.
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            got.extend(decode_all(&mut codec, &mut buf));
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn nul_terminated_body_without_content_length() {
        let mut buf = BytesMut::from(&b"MESSAGE\r\ndestination:/topic/x\r\n\r\nhi there\0\n"[..]);
        let items = decode_all(&mut StompCodec::default(), &mut buf);
        assert_eq!(
            items,
            vec![
                Item::Frame(
                    Frame::new("MESSAGE")
                        .with_header("destination", "/topic/x")
                        .with_body("hi there")
                ),
                Item::Heartbeat
            ]
        );
    }

    #[test]
    fn nul_inside_a_body_needs_content_length() {
        let body = b"a\0b\0\0c";
        let f = Frame::new("SEND").with_body(&body[..]);
        let mut buf = encode(&f);
        let Some(Item::Frame(got)) = StompCodec::default().decode(&mut buf).unwrap() else {
            panic!("no frame");
        };
        assert_eq!(&got.body[..], body);
    }

    #[test]
    fn connect_headers_are_not_escaped() {
        let f = Frame::new("CONNECT").with_header("passcode", "a\\cb");
        let buf = encode(&f);
        assert!(buf.starts_with(b"CONNECT\npasscode:a\\cb\n\n\0"));
        let mut buf = BytesMut::from(&b"CONNECTED\nserver:x\\c1\nversion:1.2\n\n\0"[..]);
        let Some(Item::Frame(got)) = StompCodec::default().decode(&mut buf).unwrap() else {
            panic!("no frame");
        };
        assert_eq!(got.header("server"), Some("x\\c1"));
        // A value a CONNECT frame cannot carry is refused, not mangled.
        let mut out = BytesMut::new();
        let err = StompCodec::default()
            .encode(Frame::new("CONNECT").with_header("login", "a\nb"), &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("not escaped"), "{err}");
    }

    #[test]
    fn bad_frames_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"message\n\n\0", "invalid command"),
            (b"MESSAGE\nnocolon\n\n\0", "no colon"),
            (b"MESSAGE\na:b\\t\n\n\0", "undefined escape"),
            (b"MESSAGE\ncontent-length:x\n\n\0", "content-length"),
            (b"MESSAGE\ncontent-length:2\n\nabc\0", "not followed by NUL"),
            (b"\rX", "CR not followed by LF"),
            (b"MESSAGE\na:\xff\n\n\0", "UTF-8"),
        ];
        for (wire, expected) in cases {
            let mut buf = BytesMut::from(*wire);
            let err = decode_all_result(&mut buf).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{:?}: {err}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut out = BytesMut::new();
        assert!(StompCodec::default()
            .encode(Frame::new("send"), &mut out)
            .is_err());
        assert!(StompCodec::default()
            .encode(
                Frame::new("SEND")
                    .with_header("content-length", "3")
                    .with_body("ab"),
                &mut out
            )
            .is_err());
    }

    fn decode_all_result(buf: &mut BytesMut) -> Result<Vec<Item>, CodecError> {
        let mut codec = StompCodec::default();
        let mut items = Vec::new();
        while let Some(item) = codec.decode(buf)? {
            items.push(item);
        }
        Ok(items)
    }

    #[test]
    fn oversize_frames_are_refused_early() {
        let mut codec = StompCodec::new(100);
        let mut buf = BytesMut::from(&b"MESSAGE\ncontent-length:1000\n\n"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLarge { limit: 100, .. })
        ));
        // Without content-length: refused once more than the limit is buffered.
        let mut codec = StompCodec::new(100);
        let mut buf = BytesMut::from(&b"MESSAGE\n\n"[..]);
        buf.extend_from_slice(&[b'x'; 95]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLarge { .. })
        ));
        // A head that never ends.
        let mut codec = StompCodec::new(100);
        let mut buf = BytesMut::from(&b"MESSAGE\n"[..]);
        buf.extend_from_slice(&[b'h'; 200]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLarge { .. })
        ));
        // Exactly at the limit passes.
        let mut codec = StompCodec::new(20);
        let mut buf = BytesMut::from(&b"MESSAGE\n\n0123456789\0"[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Item::Frame(_)))));
    }

    /// Found while writing the `stomp_codec` fuzz target: a content-length near
    /// `usize::MAX` overflowed the size check (a panic with overflow checks; without them
    /// the check passed and the buffer reservation panicked). A peer must not crash the
    /// client.
    #[test]
    fn a_huge_content_length_is_too_large_not_a_panic() {
        for len in [usize::MAX, usize::MAX - 1, usize::MAX / 2 + 1] {
            let mut codec = StompCodec::new(1024);
            let mut buf =
                BytesMut::from(format!("MESSAGE\ncontent-length:{len}\n\nbody\0").as_bytes());
            assert!(
                matches!(
                    codec.decode(&mut buf),
                    Err(CodecError::TooLarge { limit: 1024, .. })
                ),
                "content-length {len}"
            );
        }
        // Even with no practical limit.
        let mut codec = StompCodec::new(usize::MAX);
        let mut buf =
            BytesMut::from(format!("MESSAGE\ncontent-length:{}\n\nx", usize::MAX).as_bytes());
        assert!(codec.decode(&mut buf).is_err());
    }

    #[test]
    fn repeated_headers_keep_order_first_wins() {
        let mut buf = BytesMut::from(&b"MESSAGE\nk:1\nk:2\n\n\0"[..]);
        let Some(Item::Frame(f)) = StompCodec::default().decode(&mut buf).unwrap() else {
            panic!("no frame");
        };
        assert_eq!(f.header("k"), Some("1"));
        assert_eq!(f.headers.len(), 2);
    }

    /// Random frames (headers full of characters that need escaping, bodies full of NUL
    /// and EOL bytes) decode to themselves, however the bytes are split.
    #[test]
    fn random_frames_round_trip_under_random_splits() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet: Vec<char> = "ab:\\\n\r c✓é\0\t".chars().collect();
        let commands = ["SEND", "MESSAGE", "ERROR", "RECEIPT", "ACK", "CONNECT"];
        for _ in 0..500 {
            let mut frames = Vec::new();
            for _ in 0..(1 + rand() % 4) {
                let command = commands[(rand() % commands.len() as u64) as usize];
                let mut f = Frame::new(command);
                for _ in 0..(rand() % 5) {
                    let (name_len, value_len) = (1 + rand() % 6, rand() % 8);
                    let mut text = |n: u64| -> String {
                        (0..n)
                            .map(|_| alphabet[(rand() % alphabet.len() as u64) as usize])
                            .collect()
                    };
                    let name = text(name_len);
                    let value = text(value_len);
                    let (name, value) = if command == "CONNECT" {
                        // Unescaped: no EOL in either, no colon in the name.
                        (
                            name.replace([':', '\n', '\r'], "x"),
                            value.replace(['\n', '\r'], "y"),
                        )
                    } else {
                        (name, value)
                    };
                    if name != "content-length" {
                        f.header_push(name, value);
                    }
                }
                let body: Vec<u8> = (0..(rand() % 40))
                    .map(|_| [0u8, b'\n', b'\r', b'x', 0xff][(rand() % 5) as usize])
                    .collect();
                frames.push(f.with_body(body));
            }
            let mut wire = BytesMut::new();
            for f in &frames {
                wire.extend_from_slice(&encode(f));
                if rand() % 2 == 0 {
                    wire.extend_from_slice(b"\n");
                }
            }
            let mut codec = StompCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let n = 1 + (rand() as usize % 23).min(rest.len() - 1);
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                while let Some(item) = codec.decode(&mut buf).expect("valid wire decodes") {
                    if let Item::Frame(mut f) = item {
                        if !f.body.is_empty() {
                            f.headers.pop(); // the content-length the encoder added
                        }
                        got.push(f);
                    }
                }
            }
            assert_eq!(got, frames);
        }
    }

    /// A cheap deterministic fuzz: random bytes and mutated valid frames never panic.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut valid = BytesMut::new();
        for f in sample_frames() {
            valid.extend_from_slice(&encode(&f));
        }
        for _ in 0..2000 {
            let mut wire = valid.to_vec();
            for _ in 0..(rand() % 8) {
                let i = (rand() as usize) % wire.len();
                wire[i] = (rand() & 0xff) as u8;
            }
            let mut codec = StompCodec::new(4096);
            let mut buf = BytesMut::new();
            for chunk in wire.chunks(1 + (rand() as usize % 17)) {
                buf.extend_from_slice(chunk);
                while let Ok(Some(_)) = codec.decode(&mut buf) {}
            }
        }
    }
}
