use lockmgr_engine::{LeaseState, LockRange, OpenId, Request, RequestId, SessionId};
use lockmgr_proto::{
    decode_frame, samples, split_status_text, EncodeError, FrameWriter, Message, FRAME_HEADER_LEN,
    MAX_FRAME, MAX_LOCK_RANGES, MAX_STATUS_TEXT,
};

fn encode(session: SessionId, msgs: &[Message]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, session);
    for m in msgs {
        w.push(m).unwrap();
    }
    let len = w.finish();
    assert_eq!(len, buf.len());
    buf
}

fn decode(buf: &[u8]) -> Vec<Message> {
    decode_frame(buf)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn every_sample_message_roundtrips_alone() {
    for m in samples::all_messages() {
        let buf = encode(SessionId(3), std::slice::from_ref(&m));
        assert_eq!(
            buf.len(),
            FRAME_HEADER_LEN + m.encoded_len().unwrap(),
            "{m:?}"
        );
        let frame = decode_frame(&buf).unwrap();
        assert_eq!(frame.session_id(), SessionId(3));
        assert_eq!(frame.message_count(), 1);
        assert_eq!(decode(&buf), vec![m]);
    }
}

#[test]
fn all_samples_batch_into_one_frame() {
    let msgs = samples::all_messages();
    let buf = encode(SessionId(u64::MAX), &msgs);
    assert!(buf.len() <= MAX_FRAME);
    assert_eq!(decode(&buf), msgs);
}

#[test]
fn empty_frame_roundtrips() {
    let buf = encode(SessionId(1), &[]);
    assert_eq!(buf.len(), FRAME_HEADER_LEN);
    assert_eq!(decode(&buf), vec![]);
}

#[test]
fn heartbeat_frame_has_documented_layout() {
    let buf = encode(SessionId(7), &[Message::Heartbeat { seq: 1 }]);
    #[rustfmt::skip]
    let expected = [
        b'L', b'K', b'M', b'P', // magic
        1,                      // version
        0,                      // flags
        1, 0,                   // message count
        7, 0, 0, 0, 0, 0, 0, 0, // session id
        36, 0, 0, 0,            // total length
        0, 0, 0, 0,             // epoch (none)
        0x06, 0, 8, 0,          // type Heartbeat, flags, body length
        1, 0, 0, 0, 0, 0, 0, 0, // seq
    ];
    assert_eq!(buf, expected);
}

#[test]
fn lock_request_has_documented_layout() {
    let buf = encode(SessionId(0), &[samples::lock_request()]);
    let body = &buf[FRAME_HEADER_LEN + 4..];
    let mut expected = Vec::new();
    expected.extend_from_slice(&42u64.to_le_bytes()); // request id
    expected.push(4); // Lock
    expected.extend_from_slice(&7u64.to_le_bytes()); // open
    expected.push(1); // fail_immediately
    expected.extend_from_slice(&1u16.to_le_bytes()); // count
    expected.extend_from_slice(&4096u64.to_le_bytes());
    expected.extend_from_slice(&512u64.to_le_bytes());
    expected.push(1); // exclusive
    assert_eq!(body, &expected[..]);
}

#[test]
fn frames_append_back_to_back_in_one_vec() {
    let mut buf = vec![0xEE; 5];
    let mut w = FrameWriter::new(&mut buf, SessionId(1));
    w.push(&Message::Goodbye).unwrap();
    let a = w.finish();
    let mut w = FrameWriter::new(&mut buf, SessionId(2));
    w.push(&Message::StatusQuery).unwrap();
    let b = w.finish();
    assert_eq!(buf.len(), 5 + a + b);
    assert_eq!(decode(&buf[5..5 + a]), vec![Message::Goodbye]);
    let f = decode_frame(&buf[5 + a..]).unwrap();
    assert_eq!(f.session_id(), SessionId(2));
    assert_eq!(decode(&buf[5 + a..]), vec![Message::StatusQuery]);
}

#[test]
fn fixed_buffer_writer_produces_same_bytes_as_vec_writer() {
    let msgs = samples::all_messages();
    let expected = encode(SessionId(9), &msgs);
    let mut fixed = [0u8; MAX_FRAME];
    let mut w = FrameWriter::new_fixed(&mut fixed, SessionId(9)).unwrap();
    for m in &msgs {
        w.push(m).unwrap();
    }
    let len = w.finish();
    assert_eq!(&fixed[..len], &expected[..]);
}

#[test]
fn fixed_buffer_too_small_for_header() {
    let mut small = [0u8; FRAME_HEADER_LEN - 1];
    assert!(matches!(
        FrameWriter::new_fixed(&mut small, SessionId(0)),
        Err(EncodeError::BufferTooSmall { .. })
    ));
}

#[test]
fn frame_full_leaves_frame_intact_and_next_frame_continues() {
    let msg = samples::lock_request();
    let per = msg.encoded_len().unwrap();
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, SessionId(1));
    let mut pushed = 0;
    loop {
        let before = w.len();
        match w.push(&msg) {
            Ok(()) => pushed += 1,
            Err(EncodeError::FrameFull) => {
                assert_eq!(w.len(), before, "a failed push must not change the frame");
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(pushed, (MAX_FRAME - FRAME_HEADER_LEN) / per);
    assert!(w.remaining() < per);
    let len = w.finish();
    assert!(len <= MAX_FRAME);
    let got = decode(&buf);
    assert_eq!(got.len(), pushed);
    assert!(got.iter().all(|m| *m == msg));
}

#[test]
fn fixed_buffer_smaller_than_max_frame_reports_full_then_too_large() {
    let mut slot = [0u8; 64];
    let mut w = FrameWriter::new_fixed(&mut slot, SessionId(1)).unwrap();
    w.push(&Message::Heartbeat { seq: 1 }).unwrap(); // 12 bytes
    assert_eq!(
        w.push(&samples::lock_request()),
        Err(EncodeError::FrameFull)
    );
    let mut slot = [0u8; 64];
    let mut w = FrameWriter::new_fixed(&mut slot, SessionId(1)).unwrap();
    assert!(matches!(
        w.push(&samples::lock_request()),
        Err(EncodeError::MessageTooLarge { len: 41, max: 40 })
    ));
    assert!(w.is_empty());
}

#[test]
fn oversized_messages_are_refused_without_changing_frame() {
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, SessionId(1));
    w.push(&Message::Goodbye).unwrap();
    let before = w.len();
    let too_many = Message::Request {
        request_id: RequestId(1),
        body: Request::Unlock {
            open: OpenId(1),
            ranges: vec![LockRange::default(); MAX_LOCK_RANGES + 1],
        },
    };
    assert_eq!(
        w.push(&too_many),
        Err(EncodeError::TooManyRanges {
            count: MAX_LOCK_RANGES + 1,
            max: MAX_LOCK_RANGES
        })
    );
    let long_name = Message::ClientHello {
        node_name: "n".repeat(65),
        client_nonce: [0; 32],
        min_version: 1,
        max_version: 1,
    };
    assert!(matches!(
        w.push(&long_name),
        Err(EncodeError::StringTooLong { len: 65, .. })
    ));
    let bad_state = Message::Request {
        request_id: RequestId(1),
        body: Request::LeaseBreakAck {
            client_guid: Default::default(),
            key: Default::default(),
            state: LeaseState(0x8),
        },
    };
    assert!(matches!(
        w.push(&bad_state),
        Err(EncodeError::InvalidValue { value: 8, .. })
    ));
    assert_eq!(w.len(), before);
    w.finish();
    assert_eq!(decode(&buf), vec![Message::Goodbye]);
}

#[test]
fn max_ranges_fit_and_roundtrip() {
    let m = Message::Request {
        request_id: RequestId(1),
        body: Request::Lock {
            open: OpenId(1),
            ranges: (0..MAX_LOCK_RANGES as u64)
                .map(|i| LockRange {
                    offset: i * 100,
                    length: 10,
                    exclusive: i % 2 == 0,
                })
                .collect(),
            fail_immediately: true,
        },
    };
    let buf = encode(SessionId(1), std::slice::from_ref(&m));
    assert_eq!(decode(&buf), vec![m]);
}

#[test]
fn largest_status_text_fits_alone_in_a_frame() {
    let text = "x".repeat(MAX_STATUS_TEXT);
    let m = Message::StatusText { more: false, text };
    let buf = encode(SessionId(1), std::slice::from_ref(&m));
    assert_eq!(buf.len(), MAX_FRAME);
    assert_eq!(decode(&buf), vec![m]);
    let too_long = Message::StatusText {
        more: false,
        text: "x".repeat(MAX_STATUS_TEXT + 1),
    };
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, SessionId(1));
    assert!(matches!(
        w.push(&too_long),
        Err(EncodeError::StringTooLong { .. })
    ));
}

#[test]
fn status_text_splits_on_char_boundaries_and_reassembles() {
    // 3-byte characters so that MAX_STATUS_TEXT (not a multiple of 3) forces boundary fixes.
    let text: String = "ab€".repeat(MAX_STATUS_TEXT);
    let chunks: Vec<Message> = split_status_text(&text).collect();
    assert!(chunks.len() > 2);
    let mut joined = String::new();
    for (i, c) in chunks.iter().enumerate() {
        let Message::StatusText { more, text } = c else {
            panic!("{c:?}")
        };
        assert_eq!(*more, i + 1 < chunks.len());
        assert!(text.len() <= MAX_STATUS_TEXT);
        // Every chunk must fit alone in a frame.
        let buf = encode(SessionId(0), std::slice::from_ref(c));
        assert_eq!(decode(&buf), vec![c.clone()]);
        joined.push_str(text);
    }
    assert_eq!(joined, text);
    let empty: Vec<Message> = split_status_text("").collect();
    assert_eq!(
        empty,
        vec![Message::StatusText {
            more: false,
            text: String::new()
        }]
    );
}
