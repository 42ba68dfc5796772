//! Bytes from the network, cut at arbitrary points, through the frame decoder and the request
//! parser: never a panic, never more buffered than the limit allows, and every request that
//! parses survives an encode-decode round trip unchanged.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::frame::{Frame, LineCodec};
use protocol::{Request, ServerFrame};
use tokio_util::codec::Decoder;

const MAX_FRAME: usize = 256;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so the decoder sees every way of splitting input.
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = LineCodec::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(frame) = codec.decode(&mut buf).expect("decoding never fails") {
            check(frame);
        }
        assert!(buf.len() <= MAX_FRAME + 1 + chunk, "buffered {} bytes", buf.len());
    }
    while let Some(frame) = codec.decode_eof(&mut buf).expect("decoding never fails") {
        check(frame);
    }
});

fn check(frame: Frame) {
    let Frame::Line(line) = frame else {
        return;
    };
    assert!(line.len() <= MAX_FRAME);
    match Request::parse(&line) {
        Ok(request) => {
            let again = Request::parse(&request.to_json()).expect("an encoded request parses");
            assert_eq!(again, request);
        }
        Err(err) => {
            // The error reply itself must be a well-formed frame.
            let reply = ServerFrame::Err { id: err.id, error: err.error }.to_json();
            assert!(protocol::Incoming::parse(&reply).is_ok());
        }
    }
}
