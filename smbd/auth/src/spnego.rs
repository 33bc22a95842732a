//! SPNEGO (RFC 4178, MS-SPNG) framing around NTLMSSP.
//!
//! Only NTLMSSP is offered. Tokens are written by hand in DER; the reader accepts the subset of
//! BER that real clients send (definite lengths, single-byte tags).

use crate::der::{self, ctx, tlv, Reader};

/// DER content of OID 1.3.6.1.5.5.2 (SPNEGO).
pub const SPNEGO_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// DER content of OID 1.3.6.1.4.1.311.2.2.10 (NTLMSSP).
pub const NTLMSSP_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];

/// negState values of NegTokenResp (RFC 4178 4.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NegState {
    AcceptCompleted = 0,
    AcceptIncomplete = 1,
    Reject = 2,
}

/// The SecurityBuffer for the NEGOTIATE response: NegTokenInit2 advertising NTLMSSP (OID 1.3.6.1.4.1.311.2.2.10).
///
/// MS-SPNG 2.2.1: NegTokenInit2 adds `negHints`; Windows and Samba put the fixed hint name
/// "not_defined_in_RFC4178@please_ignore" there, and some clients expect the field, so we do too.
pub fn negotiate_token() -> Vec<u8> {
    let mech_types = tlv(der::TAG_SEQUENCE, &tlv(der::TAG_OID, NTLMSSP_OID));
    let hint_name = tlv(
        der::TAG_GENERAL_STRING,
        b"not_defined_in_RFC4178@please_ignore",
    );
    let neg_hints = tlv(der::TAG_SEQUENCE, &tlv(ctx(0), &hint_name));
    let mut fields = tlv(ctx(0), &mech_types);
    fields.extend_from_slice(&tlv(ctx(3), &neg_hints));
    let init = tlv(ctx(0), &tlv(der::TAG_SEQUENCE, &fields));
    let mut inner = tlv(der::TAG_OID, SPNEGO_OID);
    inner.extend_from_slice(&init);
    tlv(der::TAG_APPLICATION_0, &inner)
}

/// A decoded token from the client.
#[derive(Debug)]
pub(crate) enum ClientToken<'a> {
    /// NegTokenInit (first leg).
    Init {
        /// The DER `MechTypeList` (SEQUENCE OF OID) exactly as sent; mechListMIC covers it.
        mech_types_raw: &'a [u8],
        /// Contents of each mechanism OID, in the client's order of preference.
        mechs: Vec<&'a [u8]>,
        mech_token: Option<&'a [u8]>,
    },
    /// NegTokenResp (later legs).
    Resp {
        response_token: Option<&'a [u8]>,
        mech_list_mic: Option<&'a [u8]>,
    },
}

fn octet_string(v: &[u8]) -> Result<&[u8], String> {
    let mut r = Reader::new(v);
    match r.next() {
        Some(t) if t.tag == der::TAG_OCTET_STRING => Ok(t.value),
        _ => Err("expected OCTET STRING".into()),
    }
}

fn parse_init(body: &[u8]) -> Result<ClientToken<'_>, String> {
    let mut outer = Reader::new(body);
    let seq = outer
        .next()
        .filter(|t| t.tag == der::TAG_SEQUENCE)
        .ok_or("NegTokenInit: expected SEQUENCE")?;
    let mut fields = Reader::new(seq.value);
    let mut mech_types_raw: Option<&[u8]> = None;
    let mut mechs = Vec::new();
    let mut mech_token = None;
    while !fields.is_empty() {
        let f = fields.next().ok_or("NegTokenInit: bad field encoding")?;
        match f.tag {
            t if t == ctx(0) => {
                let list = Reader::new(f.value)
                    .next()
                    .filter(|t| t.tag == der::TAG_SEQUENCE)
                    .ok_or("mechTypes: expected SEQUENCE OF")?;
                let mut oids = Reader::new(list.value);
                while !oids.is_empty() {
                    let oid = oids
                        .next()
                        .filter(|t| t.tag == der::TAG_OID)
                        .ok_or("mechTypes: expected OID")?;
                    mechs.push(oid.value);
                }
                mech_types_raw = Some(list.raw);
            }
            t if t == ctx(1) => {} // reqFlags: ignored, as Windows does.
            t if t == ctx(2) => mech_token = Some(octet_string(f.value)?),
            // [3] mechListMIC cannot be computed before a mechanism ran; ignore it like Windows.
            _ => {} // Unknown/extension fields are skipped.
        }
    }
    let mech_types_raw = mech_types_raw.ok_or("NegTokenInit without mechTypes")?;
    Ok(ClientToken::Init {
        mech_types_raw,
        mechs,
        mech_token,
    })
}

fn parse_resp(body: &[u8]) -> Result<ClientToken<'_>, String> {
    let seq = Reader::new(body)
        .next()
        .filter(|t| t.tag == der::TAG_SEQUENCE)
        .ok_or("NegTokenResp: expected SEQUENCE")?;
    let mut fields = Reader::new(seq.value);
    let mut response_token = None;
    let mut mech_list_mic = None;
    while !fields.is_empty() {
        let f = fields.next().ok_or("NegTokenResp: bad field encoding")?;
        match f.tag {
            t if t == ctx(0) => {
                let st = Reader::new(f.value)
                    .next()
                    .filter(|t| t.tag == der::TAG_ENUMERATED && t.value.len() == 1)
                    .ok_or("negState: expected ENUMERATED")?;
                if st.value[0] == NegState::Reject as u8 {
                    return Err("client rejected the negotiation".into());
                }
            }
            t if t == ctx(1) => {} // supportedMech: only meaningful from the acceptor.
            t if t == ctx(2) => response_token = Some(octet_string(f.value)?),
            t if t == ctx(3) => mech_list_mic = Some(octet_string(f.value)?),
            _ => {}
        }
    }
    Ok(ClientToken::Resp {
        response_token,
        mech_list_mic,
    })
}

/// Parses an SPNEGO token from the client (GSS InitialContextToken, bare NegTokenInit, or NegTokenResp).
pub(crate) fn parse_client_token(buf: &[u8]) -> Result<ClientToken<'_>, String> {
    let mut r = Reader::new(buf);
    let top = r.next().ok_or("truncated SPNEGO token")?;
    match top.tag {
        der::TAG_APPLICATION_0 => {
            let mut inner = Reader::new(top.value);
            let oid = inner
                .next()
                .filter(|t| t.tag == der::TAG_OID)
                .ok_or("InitialContextToken: expected OID")?;
            if oid.value != SPNEGO_OID {
                return Err("InitialContextToken is not SPNEGO".into());
            }
            let tok = inner.next().ok_or("InitialContextToken: missing token")?;
            if tok.tag != ctx(0) {
                return Err("InitialContextToken: expected NegTokenInit".into());
            }
            parse_init(tok.value)
        }
        t if t == ctx(0) => parse_init(top.value),
        t if t == ctx(1) => parse_resp(top.value),
        other => Err(format!("unexpected SPNEGO tag {other:#04x}")),
    }
}

/// Builds a NegTokenResp.
pub(crate) fn build_resp(
    neg_state: NegState,
    supported_mech: bool,
    response_token: Option<&[u8]>,
    mech_list_mic: Option<&[u8]>,
) -> Vec<u8> {
    let mut fields = tlv(ctx(0), &tlv(der::TAG_ENUMERATED, &[neg_state as u8]));
    if supported_mech {
        fields.extend_from_slice(&tlv(ctx(1), &tlv(der::TAG_OID, NTLMSSP_OID)));
    }
    if let Some(t) = response_token {
        fields.extend_from_slice(&tlv(ctx(2), &tlv(der::TAG_OCTET_STRING, t)));
    }
    if let Some(m) = mech_list_mic {
        fields.extend_from_slice(&tlv(ctx(3), &tlv(der::TAG_OCTET_STRING, m)));
    }
    tlv(ctx(1), &tlv(der::TAG_SEQUENCE, &fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_token_structure() {
        let tok = negotiate_token();
        assert_eq!(tok[0], 0x60);
        assert_eq!(usize::from(tok[1]) + 2, tok.len());
        // The NTLMSSP OID must be present, encoded as a full OID TLV.
        let oid = tlv(der::TAG_OID, NTLMSSP_OID);
        assert!(tok.windows(oid.len()).any(|w| w == oid.as_slice()));
        // The server's own token parses as a NegTokenInit listing exactly NTLMSSP.
        match parse_client_token(&tok).unwrap() {
            ClientToken::Init {
                mechs, mech_token, ..
            } => {
                assert_eq!(mechs, vec![NTLMSSP_OID]);
                assert!(mech_token.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn resp_roundtrip() {
        let t = build_resp(NegState::AcceptIncomplete, true, Some(b"abc"), Some(b"mic"));
        match parse_client_token(&t).unwrap() {
            ClientToken::Resp {
                response_token,
                mech_list_mic,
            } => {
                assert_eq!(response_token, Some(&b"abc"[..]));
                assert_eq!(mech_list_mic, Some(&b"mic"[..]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn reject_state_is_error() {
        let t = build_resp(NegState::Reject, false, None, None);
        assert!(parse_client_token(&t).is_err());
    }

    #[test]
    fn garbage_is_error() {
        for g in [
            &[][..],
            &[0x60],
            &[0x60, 0x02, 0x06, 0x00],
            &[0x42, 0x00],
            &[0xa1, 0x02, 0x30, 0x05],
        ] {
            assert!(parse_client_token(g).is_err());
        }
    }
}
