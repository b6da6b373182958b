//! Both directions of the host channel's decoder on hostile bytes: the first byte
//! picks the direction and the size of the pieces the stream arrives in. Every frame
//! is decoded; a message that decodes must encode again and decode to itself; the
//! reader must never hold more than one frame's bytes.
#![no_main]

use bulwark_guest_protocol::{
    decode_guest, decode_host, encode_guest, encode_host, FrameReader, FRAME_HEADER_LEN,
    MAX_PAYLOAD,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let guest_side = first & 1 == 0; // 0: host messages, decoded by the guest
    let piece = usize::from(first >> 1).max(1);
    let mut reader = FrameReader::new();
    for chunk in stream.chunks(piece) {
        reader.push(chunk);
        while let Some(next) = reader.next_frame() {
            let Ok(frame) = next else { continue };
            if guest_side {
                if let Ok(msg) = decode_host(&frame) {
                    let again = encode_host(&msg).expect("a decoded message encodes");
                    let mut r = FrameReader::new();
                    r.push(&again);
                    let f = r.next_frame().expect("one frame").expect("valid frame");
                    assert_eq!(decode_host(&f).expect("decodes again"), msg);
                }
            } else if let Ok(msg) = decode_guest(&frame) {
                let again = encode_guest(&msg).expect("a decoded message encodes");
                let mut r = FrameReader::new();
                r.push(&again);
                let f = r.next_frame().expect("one frame").expect("valid frame");
                assert_eq!(decode_guest(&f).expect("decodes again"), msg);
            }
        }
        assert!(reader.pending() <= FRAME_HEADER_LEN + MAX_PAYLOAD + piece);
    }
    let _ = reader.finish();
    assert!(!reader.in_frame());
});
