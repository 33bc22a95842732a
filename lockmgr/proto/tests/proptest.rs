use lockmgr_engine::SessionId;
use lockmgr_proto::fuzzing::{check_roundtrip, Outcome};
use lockmgr_proto::strategies::{message, session_id};
use lockmgr_proto::{decode_frame, EncodeError, FrameWriter, Message, FRAME_HEADER_LEN, MAX_FRAME};
use proptest::collection::vec;
use proptest::prelude::*;

/// Packs messages into as many frames as needed, starting a new frame on `FrameFull`.
fn encode_all(session: SessionId, msgs: &[Message]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, session);
    for m in msgs {
        match w.push(m) {
            Ok(()) => {}
            Err(EncodeError::FrameFull) => {
                w.finish();
                frames.push(std::mem::take(&mut buf));
                w = FrameWriter::new(&mut buf, session);
                w.push(m).unwrap();
            }
            Err(e) => panic!("{e}: {m:?}"),
        }
    }
    w.finish();
    frames.push(buf);
    frames
}

proptest! {
    #[test]
    fn any_message_roundtrips(m in message(), s in session_id()) {
        let frames = encode_all(s, std::slice::from_ref(&m));
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(frames[0].len(), FRAME_HEADER_LEN + m.encoded_len().unwrap());
        let f = decode_frame(&frames[0]).unwrap();
        prop_assert_eq!(f.session_id(), s);
        let got: Vec<_> = f.collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(got, vec![m]);
        prop_assert_eq!(check_roundtrip(&frames[0]), Ok(Outcome::RoundTripped));
    }

    #[test]
    fn any_batch_roundtrips_across_frames(msgs in vec(message(), 0..60), s in session_id()) {
        let frames = encode_all(s, &msgs);
        let mut got = Vec::new();
        for f in &frames {
            prop_assert!(f.len() <= MAX_FRAME);
            let r = decode_frame(f).unwrap();
            prop_assert_eq!(r.session_id(), s);
            for m in r {
                got.push(m.unwrap());
            }
        }
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
        prop_assert!(check_roundtrip(&data).is_ok());
    }

    /// Random bytes almost never pass the header; this splices a valid header onto them so
    /// the message-level decoders see random input too.
    #[test]
    fn arbitrary_messages_after_valid_header_never_panic(
        count in 0u16..8,
        body in vec(any::<u8>(), 0..512),
    ) {
        let mut data = Vec::new();
        data.extend_from_slice(b"LKMP\x01\x00");
        data.extend_from_slice(&count.to_le_bytes());
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(&((FRAME_HEADER_LEN + body.len()) as u32).to_le_bytes());
        data.extend_from_slice(&[0; 4]);
        data.extend_from_slice(&body);
        let outcome = check_roundtrip(&data);
        prop_assert!(outcome.is_ok(), "{:?}", outcome);
    }

    #[test]
    fn mutated_valid_frames_never_break_roundtrip(
        msgs in vec(message(), 1..6),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut frame = encode_all(SessionId(1), &msgs).swap_remove(0);
        for (i, v) in edits {
            let at = i.index(frame.len());
            frame[at] = v;
        }
        let outcome = check_roundtrip(&frame);
        prop_assert!(outcome.is_ok(), "{:?}", outcome);
    }
}
