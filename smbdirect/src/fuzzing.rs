//! Properties the fuzz targets check, in the library so `cargo test` replays the corpus on
//! stable (`tests/fuzz_corpus.rs`) and the fuzz targets stay one line each.

use std::time::Duration;

use crate::codec::{
    BufferDescriptorV1, DataHeader, DataMessage, NegotiateRequest, NegotiateResponse,
    SMBD_VERSION_1, SMB_DIRECT_RESPONSE_REQUESTED,
};
use crate::conn::{Config, Connection, Event, Output, Role, Time};

/// The reassembly limit the decoder checks against.
const FUZZ_MAX_FRAGMENTED: u32 = 1 << 20;

/// Arbitrary bytes as every message kind: never panics; what is accepted round-trips.
/// Returns whether any decoder accepted the input.
pub fn check_decode(data: &[u8]) -> Result<bool, String> {
    let mut accepted = false;
    if let Ok(r) = NegotiateRequest::decode(data) {
        accepted = true;
        if NegotiateRequest::decode(&r.encode()) != Ok(r) {
            return Err(format!("negotiate request does not round-trip: {r:?}"));
        }
        let _ = r.check_version().and_then(|()| r.validate());
    }
    if let Ok(r) = NegotiateResponse::decode(data) {
        accepted = true;
        if NegotiateResponse::decode(&r.encode()) != Ok(r) {
            return Err(format!("negotiate response does not round-trip: {r:?}"));
        }
        let _ = r.validate(1364);
    }
    if let Ok(m) = DataMessage::decode(data, FUZZ_MAX_FRAGMENTED) {
        accepted = true;
        let again = m.header.encode(m.payload);
        match DataMessage::decode(&again, FUZZ_MAX_FRAGMENTED) {
            Ok(m2) if m2 == m => {}
            other => {
                return Err(format!(
                    "data message does not round-trip: {m:?} -> {other:?}"
                ))
            }
        }
    }
    if let Ok(list) = BufferDescriptorV1::decode_list(data) {
        accepted = true;
        if BufferDescriptorV1::encode_list(&list) != data {
            return Err("buffer descriptors do not round-trip".into());
        }
    }
    Ok(accepted)
}

/// Script operations for [`check_connection`], one byte each followed by their argument.
pub mod op {
    /// A received message: u16 length (little-endian), then that many bytes.
    pub const RECEIVE: u8 = 0;
    /// Receives posted: one byte, taken modulo 8.
    pub const POST: u8 = 1;
    /// Time passes: one byte of seconds; timers that are due fire.
    pub const WAIT: u8 = 2;
    /// The upper layer sends: u16 taken modulo 1024, in units of 16 bytes (up to 16 KiB:
    /// enough for a dozen fragments, small enough to keep the fuzzer fast).
    pub const SEND: u8 = 3;
    /// Everything the connection wants to transmit is taken.
    pub const TRANSMIT: u8 = 4;
}

/// First-byte flags of a [`check_connection`] script.
pub mod flag {
    /// The connection is the server (otherwise the client).
    pub const SERVER: u8 = 1;
    /// Negotiation is done with a valid peer before the script runs.
    pub const HANDSHAKE: u8 = 2;
}

fn fuzz_config(first: u8) -> Config {
    Config {
        receive_credit_max: 3 + u16::from(first >> 4),
        send_credit_target: 1 + u16::from((first >> 2) & 3),
        ..Config::default()
    }
}

struct Checked {
    conn: Connection,
    now: Time,
    closed: bool,
    max_message: usize,
}

impl Checked {
    fn drain(&mut self) -> Result<(), String> {
        while let Some(o) = self.conn.poll_output() {
            if self.closed {
                return Err(format!("output after Closed: {o:?}"));
            }
            match o {
                Output::Closed(_) => self.closed = true,
                Output::Message(m) if m.len() > self.max_message => {
                    return Err(format!("reassembled {} bytes past the limit", m.len()));
                }
                _ => {}
            }
        }
        if self.conn.receive_credits() > self.conn.posted_receives() {
            return Err(format!(
                "granted {} credits with {} receives posted",
                self.conn.receive_credits(),
                self.conn.posted_receives()
            ));
        }
        Ok(())
    }

    fn transmit(&mut self) -> Result<(), String> {
        for _ in 0..256 {
            // The server's Negotiate Response is sent by the transmit that establishes.
            let data_phase = self.conn.is_established();
            let Some(t) = self.conn.poll_transmit() else {
                break;
            };
            let m = t.bytes;
            if data_phase {
                let max = self.conn.negotiated().max_send_size as usize;
                if m.len() > max {
                    return Err(format!("sent {} bytes, peer receives {max}", m.len()));
                }
                DataMessage::decode(&m, u32::MAX).map_err(|e| format!("sent garbage: {e}"))?;
            }
        }
        self.drain()
    }
}

/// Drives one connection with a script of receives, posts, time and sends (see [`op`],
/// [`flag`]): never panics, never grants more credits than receives are posted, never sends
/// more than the peer receives, says nothing after Closed.
pub fn check_connection(data: &[u8]) -> Result<(), String> {
    let Some((&first, mut rest)) = data.split_first() else {
        return Ok(());
    };
    let role = if first & flag::SERVER != 0 {
        Role::Server
    } else {
        Role::Client
    };
    let config = fuzz_config(first);
    let max_message = config.max_fragmented_size as usize;
    let now = Time::default();
    let conn = Connection::new(role, config, now).map_err(|e| e.to_string())?;
    let mut c = Checked {
        conn,
        now,
        closed: false,
        max_message,
    };
    c.conn.handle(now, Event::ReceivesPosted(4));
    if first & flag::HANDSHAKE != 0 {
        handshake(&mut c)?;
    }
    while let Some((&code, tail)) = rest.split_first() {
        rest = tail;
        match code % 5 {
            op::RECEIVE => {
                let len = take_u16(&mut rest).unwrap_or(0) as usize;
                let (msg, tail) = rest.split_at(len.min(rest.len()));
                rest = tail;
                c.conn.handle(c.now, Event::Received(msg));
            }
            op::POST => {
                let n = take_u8(&mut rest).unwrap_or(1) % 8;
                c.conn.handle(c.now, Event::ReceivesPosted(u16::from(n)));
            }
            op::WAIT => {
                let secs = take_u8(&mut rest).unwrap_or(1);
                c.now = c.now + Duration::from_secs(u64::from(secs));
                if c.conn.poll_timeout().is_some_and(|t| t <= c.now) {
                    c.conn.handle(c.now, Event::Timeout);
                }
            }
            op::SEND => {
                let len = usize::from(take_u16(&mut rest).unwrap_or(1) % 1024) * 16;
                let _ = c.conn.send(c.now, vec![0x5A; len]);
            }
            _ => c.transmit()?,
        }
        c.drain()?;
    }
    c.transmit()
}

fn take_u8(b: &mut &[u8]) -> Option<u8> {
    let (&v, tail) = b.split_first()?;
    *b = tail;
    Some(v)
}

fn take_u16(b: &mut &[u8]) -> Option<u16> {
    let lo = take_u8(b)?;
    let hi = take_u8(b).unwrap_or(0);
    Some(u16::from_le_bytes([lo, hi]))
}

fn valid_request() -> NegotiateRequest {
    NegotiateRequest {
        min_version: SMBD_VERSION_1,
        max_version: SMBD_VERSION_1,
        credits_requested: 4,
        preferred_send_size: 1364,
        max_receive_size: 1364,
        max_fragmented_size: 1 << 20,
    }
}

fn valid_response() -> NegotiateResponse {
    NegotiateResponse {
        min_version: SMBD_VERSION_1,
        max_version: SMBD_VERSION_1,
        negotiated_version: SMBD_VERSION_1,
        credits_requested: 4,
        credits_granted: 4,
        status: 0,
        max_read_write_size: 1 << 20,
        preferred_send_size: 1364,
        max_receive_size: 1364,
        max_fragmented_size: 1 << 20,
    }
}

fn handshake(c: &mut Checked) -> Result<(), String> {
    match c.conn.role() {
        Role::Server => {
            c.conn
                .handle(c.now, Event::Received(&valid_request().encode()));
            c.transmit()
        }
        Role::Client => {
            c.transmit()?;
            c.conn
                .handle(c.now, Event::Received(&valid_response().encode()));
            c.drain()
        }
    }
}

fn receive(script: &mut Vec<u8>, msg: &[u8]) {
    script.push(op::RECEIVE);
    script.extend_from_slice(&(msg.len() as u16).to_le_bytes());
    script.extend_from_slice(msg);
}

fn data(granted: u16, flags: u16, remaining: u32, payload: &[u8]) -> Vec<u8> {
    DataHeader {
        credits_requested: 4,
        credits_granted: granted,
        flags,
        remaining_data_length: remaining,
    }
    .encode(payload)
}

/// Seed inputs: (file name, bytes). `dec-` seeds are for `smbdirect_decode`, `conn-` seeds
/// for `smbdirect_conn`.
pub fn samples() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        (
            "dec-negotiate-request".to_string(),
            valid_request().encode(),
        ),
        (
            "dec-negotiate-response".to_string(),
            valid_response().encode(),
        ),
        ("dec-data".to_string(), data(3, 0, 0, b"SMB2 payload")),
        (
            "dec-data-empty".to_string(),
            data(1, SMB_DIRECT_RESPONSE_REQUESTED, 0, &[]),
        ),
        (
            "dec-descriptors".to_string(),
            BufferDescriptorV1::encode_list(&[
                BufferDescriptorV1 {
                    offset: 0x7f00_0000_1000,
                    token: 0x1234,
                    length: 65536,
                },
                BufferDescriptorV1 {
                    offset: 0x7f00_0001_0000,
                    token: 0x1235,
                    length: 4096,
                },
            ]),
        ),
    ];

    // Server: handshake, a message in two fragments, a keep-alive, sends, time passing.
    let mut s = vec![flag::SERVER | flag::HANDSHAKE];
    s.extend([op::POST, 4]);
    receive(&mut s, &data(4, 0, 100, &[1; 200]));
    receive(&mut s, &data(0, 0, 0, &[2; 100]));
    receive(&mut s, &data(0, SMB_DIRECT_RESPONSE_REQUESTED, 0, &[]));
    s.extend([op::SEND, 200, 0, op::TRANSMIT, op::POST, 4, op::TRANSMIT]);
    s.extend([op::WAIT, 200, op::TRANSMIT, op::WAIT, 10]);
    out.push(("conn-server-fragments".to_string(), s));

    // Server: negotiation from the script itself (no HANDSHAKE flag).
    let mut s = vec![flag::SERVER];
    receive(&mut s, &valid_request().encode());
    s.push(op::TRANSMIT);
    receive(&mut s, &data(4, 0, 0, b"negotiate"));
    s.push(op::TRANSMIT);
    out.push(("conn-server-negotiate".to_string(), s));

    // Client: handshake, a large upper-layer send under few credits, grants trickling in.
    let mut s = vec![flag::HANDSHAKE | (1 << 4)];
    s.extend([op::SEND, 0, 2, op::TRANSMIT]);
    for _ in 0..4 {
        receive(&mut s, &data(2, 0, 0, &[]));
        s.extend([op::POST, 2, op::TRANSMIT]);
    }
    s.extend([op::WAIT, 30]);
    out.push(("conn-client-credits".to_string(), s));
    out
}
