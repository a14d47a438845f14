//! The STOMP 1.2 frame codec on arbitrary bytes, fed in arbitrary chunks: it never panics,
//! never returns a frame over its limit, and every frame it decodes encodes back to bytes
//! that decode to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use polybridge_stomp::codec::{Item, StompCodec};
use polybridge_stomp::frame::Frame;
use tokio_util::codec::{Decoder, Encoder};

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // First byte: chunk size, so partial reads are exercised as a socket would give them.
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = StompCodec::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    'feed: for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Item::Frame(f))) => frames.push(f),
                Ok(Some(Item::Heartbeat)) => {}
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    for frame in frames {
        assert!(
            frame.body.len() <= LIMIT,
            "a frame over the limit was decoded"
        );
        roundtrip(&frame);
    }
});

fn roundtrip(frame: &Frame) {
    let mut out = BytesMut::new();
    if StompCodec::new(LIMIT)
        .encode(frame.clone(), &mut out)
        .is_err()
    {
        return;
    }
    let mut codec = StompCodec::new(usize::MAX / 2);
    let again = match codec.decode(&mut out) {
        Ok(Some(Item::Frame(f))) => f,
        other => panic!("{frame:?} encoded to bytes that decode to {other:?}"),
    };
    assert!(
        out.is_empty(),
        "{frame:?}: bytes left after the re-decoded frame"
    );
    assert_eq!(again.command, frame.command);
    assert_eq!(again.body, frame.body);
    // The encoder adds `content-length` to a frame with a body and none given.
    let mut expected = frame.headers.clone();
    if !frame.body.is_empty() && !frame.headers.iter().any(|(n, _)| n == "content-length") {
        expected.push(("content-length".into(), frame.body.len().to_string()));
    }
    assert_eq!(again.headers, expected, "headers changed in a round trip");
}
