//! The endpoint mapper (C706 appendix O / MS-RPCE 2.2.1.2 towers): `ept_map` answers where
//! an interface is served on ncacn_ip_tcp, which is how Windows and Samba clients find the
//! witness service's dynamic port. Every other opnum (ept_lookup, ept_insert, ...) is out
//! of range: registration is smbd's configuration, not a remote operation.

use std::net::Ipv4Addr;

use crate::ndr::{DecodeError, NdrReader, NdrWriter};
use crate::pdu::{fault, SyntaxId, Uuid, NDR20};
use crate::pipe::{CallId, CallResult, RpcInterface};

/// epmapper e1af8308-5d1f-11c9-91a4-08002b14a0fa version 3.0.
pub const EPM: SyntaxId = SyntaxId {
    uuid: Uuid::from_fields(
        0xe1af_8308,
        0x5d1f,
        0x11c9,
        [0x91, 0xa4, 0x08, 0x00, 0x2b, 0x14, 0xa0, 0xfa],
    ),
    major: 3,
    minor: 0,
};

pub const OPNUM_EPT_MAP: u16 = 3;

/// ept_map's status when no tower matches (C706 appendix O).
pub const EPT_S_NOT_REGISTERED: u32 = 0x16c9_a0d6;

/// Tower floor protocol identifiers (C706 appendix L, MS-RPCE 2.2.1.2).
mod protocol {
    pub const UUID: u8 = 0x0d;
    pub const NCACN: u8 = 0x0b;
    pub const TCP: u8 = 0x07;
    pub const IP: u8 = 0x09;
}

/// A tower is small (five floors, under 100 bytes); anything near this bound is not one.
const MAX_TOWER: usize = 1024;
/// ept_map's max_towers is `[range(0,500)]`; one tower per interface is ever answered.
const MAX_TOWERS: u32 = 500;

/// A decoded ept_map request: the interface its tower asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRequest {
    pub interface: Option<SyntaxId>,
    pub max_towers: u32,
}

/// Parse a tower's floors; returns the first floor's interface if it is a UUID floor.
pub fn tower_interface(tower: &[u8]) -> Result<SyntaxId, DecodeError> {
    let floors = tower
        .get(0..2)
        .ok_or(DecodeError::Truncated { at: 0, needed: 2 })?;
    if u16::from_le_bytes([floors[0], floors[1]]) == 0 {
        return Err(DecodeError::Invalid("tower without floors"));
    }
    let lhs_len = tower
        .get(2..4)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        .ok_or(DecodeError::Truncated { at: 2, needed: 2 })?;
    let lhs = tower.get(4..4 + lhs_len).ok_or(DecodeError::Truncated {
        at: 4,
        needed: lhs_len,
    })?;
    let rhs = tower
        .get(4 + lhs_len..4 + lhs_len + 4)
        .ok_or(DecodeError::Truncated {
            at: 4 + lhs_len,
            needed: 4,
        })?;
    if lhs_len != 19 || lhs[0] != protocol::UUID || u16::from_le_bytes([rhs[0], rhs[1]]) != 2 {
        return Err(DecodeError::Invalid(
            "tower's first floor is not an interface",
        ));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&lhs[1..17]);
    Ok(SyntaxId {
        uuid: Uuid(uuid),
        major: u16::from_le_bytes([lhs[17], lhs[18]]),
        minor: u16::from_le_bytes([rhs[2], rhs[3]]),
    })
}

fn floor(out: &mut Vec<u8>, lhs: &[u8], rhs: &[u8]) {
    out.extend_from_slice(&(lhs.len() as u16).to_le_bytes());
    out.extend_from_slice(lhs);
    out.extend_from_slice(&(rhs.len() as u16).to_le_bytes());
    out.extend_from_slice(rhs);
}

fn uuid_floor(out: &mut Vec<u8>, s: &SyntaxId) {
    let mut lhs = vec![protocol::UUID];
    lhs.extend_from_slice(&s.uuid.0);
    lhs.extend_from_slice(&s.major.to_le_bytes());
    floor(out, &lhs, &s.minor.to_le_bytes());
}

/// The ncacn_ip_tcp tower of `iface` at `ip`:`port` (MS-RPCE 2.2.1.2: port and address in
/// network byte order, the rest little-endian).
pub fn tcp_tower(iface: &SyntaxId, ip: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut t = 5u16.to_le_bytes().to_vec();
    uuid_floor(&mut t, iface);
    uuid_floor(&mut t, &NDR20);
    floor(&mut t, &[protocol::NCACN], &0u16.to_le_bytes());
    floor(&mut t, &[protocol::TCP], &port.to_be_bytes());
    floor(&mut t, &[protocol::IP], &ip.octets());
    t
}

pub fn decode_map(stub: &[u8]) -> Result<MapRequest, DecodeError> {
    let mut r = NdrReader::new(stub);
    // [in, ptr] UUID* obj: the object UUID is not used to pick an endpoint here.
    if r.unique_ptr()? {
        r.bytes(16)?;
    }
    let interface = if r.unique_ptr()? {
        // twr_t, a conformant structure: its conformance first, then tower_length and bytes.
        let conformance = r.u32()? as usize;
        let len = r.u32()? as usize;
        if len > MAX_TOWER || conformance != len {
            return Err(DecodeError::TooLarge { what: "tower", len });
        }
        let tower = r.bytes(len)?;
        tower_interface(tower).ok()
    } else {
        None
    };
    // [in, out] ept_lookup_handle_t: a context handle; ignored (one answer, no paging).
    r.align(4)?;
    r.bytes(20)?;
    let max_towers = r.u32()?;
    if max_towers > MAX_TOWERS {
        return Err(DecodeError::TooLarge {
            what: "max_towers",
            len: max_towers as usize,
        });
    }
    Ok(MapRequest {
        interface,
        max_towers,
    })
}

/// ept_map's response stub carrying `towers` (at most `max_towers` of them).
pub fn encode_map_reply(max_towers: u32, towers: &[Vec<u8>], status: u32) -> Vec<u8> {
    let n = towers.len().min(max_towers as usize);
    let mut w = NdrWriter::new();
    // The entry handle back, nil: every answer is complete.
    w.u32(0);
    for _ in 0..16 {
        w.u8(0);
    }
    w.u32(n as u32);
    // [size_is(max_towers), length_is(*num_towers)] twr_p_t*: conformant varying array of
    // pointers, the towers deferred after it.
    w.u32(max_towers);
    w.u32(0);
    w.u32(n as u32);
    for t in &towers[..n] {
        w.referent_id();
        let t = t.clone();
        w.defer(move |w| {
            w.u32(t.len() as u32);
            w.u32(t.len() as u32);
            for b in t {
                w.u8(b);
            }
        });
    }
    w.flush_deferred();
    w.u32(status);
    w.into_bytes()
}

/// The endpoint mapper of one connection: the interfaces served on TCP and their ports, and
/// the address the client reached this server on (what it answers in the towers).
pub struct Epm {
    pub endpoints: Vec<(SyntaxId, u16)>,
    pub local_ip: Ipv4Addr,
}

impl Epm {
    fn map(&self, stub: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let req = decode_map(stub)?;
        let found = req.interface.and_then(|want| {
            self.endpoints
                .iter()
                .find(|(s, _)| s.uuid == want.uuid && s.major == want.major)
        });
        Ok(match found {
            Some((s, port)) if req.max_towers > 0 => {
                let tower = tcp_tower(s, self.local_ip, *port);
                encode_map_reply(req.max_towers, &[tower], 0)
            }
            _ => encode_map_reply(req.max_towers, &[], EPT_S_NOT_REGISTERED),
        })
    }
}

impl RpcInterface for Epm {
    fn syntax(&self) -> SyntaxId {
        EPM
    }

    fn call(&mut self, _call: CallId, op: u16, stub: &[u8]) -> CallResult {
        if op != OPNUM_EPT_MAP {
            return CallResult::Fault(fault::NCA_S_OP_RNG_ERROR);
        }
        match self.map(stub) {
            Ok(r) => CallResult::Reply(r),
            Err(e) => {
                tracing::debug!(%e, "ept_map stub data");
                CallResult::Fault(fault::BAD_STUB_DATA)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::witness::WITNESS;

    /// An ept_map request as clients send it: a null object, the tower, a nil handle.
    pub(crate) fn map_request(iface: &SyntaxId, max_towers: u32) -> Vec<u8> {
        let tower = tcp_tower(iface, Ipv4Addr::UNSPECIFIED, 0);
        let mut w = NdrWriter::new();
        w.null_ptr();
        w.referent_id();
        w.u32(tower.len() as u32);
        w.u32(tower.len() as u32);
        for b in &tower {
            w.u8(*b);
        }
        w.align(4);
        for _ in 0..20 {
            w.u8(0);
        }
        w.u32(max_towers);
        w.into_bytes()
    }

    #[test]
    fn tower_round_trip() {
        let t = tcp_tower(&WITNESS, Ipv4Addr::new(10, 0, 0, 1), 4135);
        assert_eq!(tower_interface(&t).unwrap(), WITNESS);
        // Port big-endian in floor 4, address last.
        assert_eq!(&t[t.len() - 4..], &[10, 0, 0, 1]);
        assert!(tower_interface(&t[..10]).is_err());
    }

    #[test]
    fn map_answers_the_witness_port_and_refuses_others() {
        let mut epm = Epm {
            endpoints: vec![(WITNESS, 4135)],
            local_ip: Ipv4Addr::new(127, 0, 0, 2),
        };
        let call = CallId {
            call_id: 1,
            context_id: 0,
        };
        let CallResult::Reply(r) = epm.call(call, OPNUM_EPT_MAP, &map_request(&WITNESS, 4)) else {
            panic!("no reply");
        };
        let mut rd = NdrReader::new(&r);
        rd.bytes(20).unwrap();
        assert_eq!(rd.u32().unwrap(), 1);
        assert_eq!(
            (rd.u32().unwrap(), rd.u32().unwrap(), rd.u32().unwrap()),
            (4, 0, 1)
        );
        assert!(rd.unique_ptr().unwrap());
        let len = rd.u32().unwrap();
        assert_eq!(rd.u32().unwrap(), len);
        let tower = rd.bytes(len as usize).unwrap();
        assert_eq!(
            tower,
            tcp_tower(&WITNESS, Ipv4Addr::new(127, 0, 0, 2), 4135)
        );
        rd.align(4).unwrap();
        assert_eq!(rd.u32().unwrap(), 0);
        assert_eq!(rd.remaining(), 0);

        let CallResult::Reply(r) = epm.call(call, OPNUM_EPT_MAP, &map_request(&EPM, 1)) else {
            panic!("no reply");
        };
        assert_eq!(&r[r.len() - 4..], &EPT_S_NOT_REGISTERED.to_le_bytes());
        assert_eq!(
            epm.call(call, OPNUM_EPT_MAP, &[1, 2, 3]),
            CallResult::Fault(fault::BAD_STUB_DATA)
        );
    }
}
