//! The SMB witness service (MS-SWN): stub decoding and encoding of its five operations, and
//! the [`Witness`] RPC interface that hands decoded calls to a [`WitnessBackend`] (the
//! registrations and cluster state live in smbd, which also completes pending AsyncNotify
//! calls with [`encode_notify_reply`]).

use crate::ndr::{DecodeError, NdrReader, NdrWriter};
use crate::pdu::{fault, SyntaxId, Uuid};
use crate::pipe::{CallId, CallResult, RpcInterface};

/// witness ccd8c074-d0e5-4a40-92b4-d074faa6ba28 version 1.1 (MS-SWN 2.1).
pub const WITNESS: SyntaxId = SyntaxId {
    uuid: Uuid::from_fields(
        0xccd8_c074,
        0xd0e5,
        0x4a40,
        [0x92, 0xb4, 0xd0, 0x74, 0xfa, 0xa6, 0xba, 0x28],
    ),
    major: 1,
    minor: 1,
};

pub mod opnum {
    pub const GET_INTERFACE_LIST: u16 = 0;
    pub const REGISTER: u16 = 1;
    pub const UNREGISTER: u16 = 2;
    pub const ASYNC_NOTIFY: u16 = 3;
    pub const REGISTER_EX: u16 = 4;
}

/// Protocol versions (MS-SWN 2.2.2.1 / 3.1.4.2 / 3.1.4.5).
pub const VERSION_1: u32 = 0x0001_0001;
pub const VERSION_2: u32 = 0x0002_0000;

/// Win32 error codes the operations return (MS-SWN 3.1.4).
pub mod werror {
    pub const OK: u32 = 0;
    pub const ACCESS_DENIED: u32 = 5;
    pub const NOT_ENOUGH_MEMORY: u32 = 8;
    pub const INVALID_PARAMETER: u32 = 87;
    pub const REVISION_MISMATCH: u32 = 1306;
    pub const NOT_FOUND: u32 = 1168;
    pub const TIMEOUT: u32 = 1460;
    pub const INVALID_STATE: u32 = 5023;
}

/// WITNESS_INTERFACE_INFO State (MS-SWN 2.2.2.1).
pub mod iface_state {
    pub const UNKNOWN: u16 = 0;
    pub const AVAILABLE: u16 = 1;
    pub const UNAVAILABLE: u16 = 0xff;
}

/// WITNESS_INTERFACE_INFO Flags (MS-SWN 2.2.2.1).
pub mod iface_flags {
    pub const IPV4_VALID: u32 = 0x1;
    pub const IPV6_VALID: u32 = 0x2;
    /// The client may use this interface's address for its witness connection.
    pub const INTERFACE_WITNESS: u32 = 0x4;
}

/// RESP_ASYNC_NOTIFY MessageType (MS-SWN 2.2.2.4).
pub mod message_type {
    pub const RESOURCE_CHANGE: u32 = 1;
    pub const CLIENT_MOVE: u32 = 2;
    pub const SHARE_MOVE: u32 = 3;
    pub const IP_CHANGE: u32 = 4;
}

/// RESOURCE_CHANGE ChangeType (MS-SWN 2.2.2.5).
pub mod resource_state {
    pub const UNKNOWN: u32 = 0;
    pub const AVAILABLE: u32 = 1;
    pub const UNAVAILABLE: u32 = 0xff;
}

/// IPADDR_INFO Flags (MS-SWN 2.2.2.6).
pub mod ipaddr_flags {
    pub const V4: u32 = 0x1;
    pub const V6: u32 = 0x2;
    pub const ONLINE: u32 = 0x8;
    pub const OFFLINE: u32 = 0x10;
}

/// RegisterEx Flags: the client wants IP_CHANGE notifications too.
pub const REGISTER_IP_NOTIFICATION: u32 = 0x1;

/// WITNESS_INTERFACE_INFO's InterfaceGroupName: a fixed array of 260 UTF-16 units.
const GROUP_NAME_UNITS: usize = 260;

/// An RPC context handle (MS-RPCE 2.2.2.12? / C706 ndr_context_handle): attributes + UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ContextHandle {
    pub attributes: u32,
    pub uuid: Uuid,
}

impl ContextHandle {
    pub const LEN: usize = 20;

    pub fn read(r: &mut NdrReader<'_>) -> Result<Self, DecodeError> {
        let attributes = r.u32()?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(r.bytes(16)?);
        Ok(Self {
            attributes,
            uuid: Uuid(uuid),
        })
    }

    pub fn write(&self, w: &mut NdrWriter) {
        w.u32(self.attributes);
        for b in self.uuid.0 {
            w.u8(b);
        }
    }

    pub fn is_nil(&self) -> bool {
        self.attributes == 0 && self.uuid == Uuid::default()
    }
}

/// One entry of WitnessrGetInterfaceList's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub group_name: String,
    pub version: u32,
    /// An [`iface_state`] value.
    pub state: u16,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// Whether the client may use it for the witness connection ([`iface_flags::INTERFACE_WITNESS`]).
    pub witness: bool,
}

/// A decoded WitnessrRegister or WitnessrRegisterEx request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterRequest {
    pub version: u32,
    pub net_name: Option<String>,
    /// RegisterEx only.
    pub share_name: Option<String>,
    pub ip_address: Option<String>,
    pub client_computer_name: Option<String>,
    /// RegisterEx only (0 for Register).
    pub flags: u32,
    /// RegisterEx only: seconds an AsyncNotify may wait before ERROR_TIMEOUT; 0 = forever.
    pub keep_alive_timeout: u32,
    /// Which operation it came from.
    pub ex: bool,
}

/// One IPADDR_INFO of an IPADDR_INFO_LIST (MS-SWN 2.2.2.6): an address and whether it is
/// online ([`ipaddr_flags::ONLINE`]) or offline ([`ipaddr_flags::OFFLINE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpAddrInfo {
    pub addr: std::net::IpAddr,
    pub online: bool,
}

impl IpAddrInfo {
    pub fn online(addr: std::net::IpAddr) -> Self {
        Self { addr, online: true }
    }

    /// Its Flags: the address family bit and the online or offline bit.
    pub fn flags(&self) -> u32 {
        let family = match self.addr {
            std::net::IpAddr::V4(_) => ipaddr_flags::V4,
            std::net::IpAddr::V6(_) => ipaddr_flags::V6,
        };
        family
            | if self.online {
                ipaddr_flags::ONLINE
            } else {
                ipaddr_flags::OFFLINE
            }
    }
}

/// One notification an AsyncNotify returns (MS-SWN 2.2.2.4), with its messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// RESOURCE_CHANGE: resource names with a [`resource_state`] each.
    ResourceChange(Vec<(String, u32)>),
    /// CLIENT_MOVE: the addresses to move to (one IPADDR_INFO_LIST message, all online).
    ClientMove(Vec<std::net::IpAddr>),
    /// SHARE_MOVE (MS-SWN 3.1.4.4, 3.1.6.3): where the share went, one IPADDR_INFO_LIST.
    ShareMove(Vec<IpAddrInfo>),
    /// IP_CHANGE (MS-SWN 3.1.4.4, 3.1.6.4): the server's addresses that went online or
    /// offline, one IPADDR_INFO_LIST.
    IpChange(Vec<IpAddrInfo>),
}

/// What a pending AsyncNotify completes with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyOutcome {
    Notification(Notification),
    /// No notification: a Win32 error (ERROR_TIMEOUT after the keep-alive, ERROR_NOT_FOUND
    /// after an UnRegister).
    Error(u32),
}

/// The server side of the witness: registrations and cluster state.
pub trait WitnessBackend: Send {
    fn interface_list(&mut self) -> Result<Vec<InterfaceInfo>, u32>;
    /// Validate and store a registration; the answer is its context handle or a Win32 error.
    fn register(&mut self, req: &RegisterRequest) -> Result<ContextHandle, u32>;
    fn unregister(&mut self, handle: ContextHandle) -> u32;
    /// An AsyncNotify: an immediate outcome, or `Ok(None)` to leave `call` pending until the
    /// backend's owner completes it through [`crate::RpcPipe::complete`] with
    /// [`encode_notify_reply`].
    fn async_notify(
        &mut self,
        handle: ContextHandle,
        call: CallId,
    ) -> Result<Option<NotifyOutcome>, u32>;
}

pub fn decode_register(stub: &[u8], ex: bool) -> Result<RegisterRequest, DecodeError> {
    let mut r = NdrReader::new(stub);
    let version = r.u32()?;
    let net_name = r.unique_string()?;
    let share_name = if ex { r.unique_string()? } else { None };
    let ip_address = r.unique_string()?;
    let client_computer_name = r.unique_string()?;
    let (flags, keep_alive_timeout) = if ex { (r.u32()?, r.u32()?) } else { (0, 0) };
    Ok(RegisterRequest {
        version,
        net_name,
        share_name,
        ip_address,
        client_computer_name,
        flags,
        keep_alive_timeout,
        ex,
    })
}

/// UnRegister and AsyncNotify take only a context handle.
pub fn decode_handle(stub: &[u8]) -> Result<ContextHandle, DecodeError> {
    ContextHandle::read(&mut NdrReader::new(stub))
}

pub fn encode_interface_list(list: &[InterfaceInfo], status: u32) -> Vec<u8> {
    let mut w = NdrWriter::new();
    // [out] PWITNESS_INTERFACE_LIST*: the unique pointer, then the list structure.
    w.referent_id();
    w.u32(list.len() as u32);
    if list.is_empty() {
        w.null_ptr();
    } else {
        w.referent_id();
        w.u32(list.len() as u32);
        for i in list {
            let mut units: Vec<u16> = i.group_name.encode_utf16().collect();
            units.truncate(GROUP_NAME_UNITS - 1);
            units.resize(GROUP_NAME_UNITS, 0);
            for u in units {
                w.u16(u);
            }
            w.u32(i.version);
            w.u16(i.state);
            // Addresses go in network byte order (the IDL marks them big-endian).
            let mut flags = 0;
            w.align(4);
            match i.ipv4 {
                Some(a) => {
                    flags |= iface_flags::IPV4_VALID;
                    for b in a.octets() {
                        w.u8(b);
                    }
                }
                None => w.u32(0),
            }
            match i.ipv6 {
                Some(a) => {
                    flags |= iface_flags::IPV6_VALID;
                    for b in a.octets() {
                        w.u8(b);
                    }
                }
                None => (0..16).for_each(|_| w.u8(0)),
            }
            if i.witness {
                flags |= iface_flags::INTERFACE_WITNESS;
            }
            w.u32(flags);
        }
    }
    w.u32(status);
    w.into_bytes()
}

fn encode_register_reply(handle: ContextHandle, status: u32) -> Vec<u8> {
    let mut w = NdrWriter::new();
    handle.write(&mut w);
    w.u32(status);
    w.into_bytes()
}

/// The message buffer of a notification: its messages back to back, little-endian
/// (MS-SWN 2.2.2.5, 2.2.2.6), and their count.
pub fn notification_messages(n: &Notification) -> (u32, u32, Vec<u8>) {
    let mut buf = Vec::new();
    match n {
        Notification::ResourceChange(items) => {
            for (name, state) in items {
                let units: Vec<u16> = name.encode_utf16().chain(std::iter::once(0)).collect();
                let len = 8 + 2 * units.len() as u32;
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(&state.to_le_bytes());
                for u in units {
                    buf.extend_from_slice(&u.to_le_bytes());
                }
            }
            (message_type::RESOURCE_CHANGE, items.len() as u32, buf)
        }
        Notification::ClientMove(addrs) => {
            let list: Vec<IpAddrInfo> = addrs.iter().map(|a| IpAddrInfo::online(*a)).collect();
            ipaddr_info_list(&mut buf, &list);
            (message_type::CLIENT_MOVE, 1, buf)
        }
        Notification::ShareMove(list) => {
            ipaddr_info_list(&mut buf, list);
            (message_type::SHARE_MOVE, 1, buf)
        }
        Notification::IpChange(list) => {
            ipaddr_info_list(&mut buf, list);
            (message_type::IP_CHANGE, 1, buf)
        }
    }
}

/// One IPADDR_INFO_LIST message (MS-SWN 2.2.2.6): Length, Reserved, IPAddrInstances, then
/// 24 bytes per address (Flags, IPV4, IPV6; the addresses in network byte order, the unused
/// one zero). Little-endian like every notification message (2.2.2.4).
fn ipaddr_info_list(buf: &mut Vec<u8>, list: &[IpAddrInfo]) {
    let len = 12 + 24 * list.len() as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for info in list {
        let mut v4 = [0u8; 4];
        let mut v6 = [0u8; 16];
        match info.addr {
            std::net::IpAddr::V4(a) => v4 = a.octets(),
            std::net::IpAddr::V6(a) => v6 = a.octets(),
        }
        buf.extend_from_slice(&info.flags().to_le_bytes());
        buf.extend_from_slice(&v4);
        buf.extend_from_slice(&v6);
    }
}

/// WitnessrAsyncNotify's response stub for `outcome`.
pub fn encode_notify_reply(outcome: &NotifyOutcome) -> Vec<u8> {
    let mut w = NdrWriter::new();
    match outcome {
        NotifyOutcome::Notification(n) => {
            let (ty, count, buf) = notification_messages(n);
            w.referent_id();
            w.u32(ty);
            w.u32(buf.len() as u32);
            w.u32(count);
            w.referent_id();
            // [size_is(Length)] byte array: its conformance, then the bytes.
            w.u32(buf.len() as u32);
            for b in buf {
                w.u8(b);
            }
            w.u32(werror::OK);
        }
        NotifyOutcome::Error(status) => {
            w.null_ptr();
            w.u32(*status);
        }
    }
    w.into_bytes()
}

/// The witness interface of one RPC connection.
pub struct Witness<B: WitnessBackend> {
    pub backend: B,
}

impl<B: WitnessBackend> Witness<B> {
    pub fn new(backend: B) -> Self {
        Self { backend }
    }

    fn run(&mut self, call: CallId, op: u16, stub: &[u8]) -> Result<CallResult, DecodeError> {
        Ok(match op {
            opnum::GET_INTERFACE_LIST => CallResult::Reply(match self.backend.interface_list() {
                Ok(list) => encode_interface_list(&list, werror::OK),
                Err(status) => {
                    let mut w = NdrWriter::new();
                    w.null_ptr();
                    w.u32(status);
                    w.into_bytes()
                }
            }),
            opnum::REGISTER | opnum::REGISTER_EX => {
                let req = decode_register(stub, op == opnum::REGISTER_EX)?;
                CallResult::Reply(match self.backend.register(&req) {
                    Ok(h) => encode_register_reply(h, werror::OK),
                    Err(status) => encode_register_reply(ContextHandle::default(), status),
                })
            }
            opnum::UNREGISTER => {
                let h = decode_handle(stub)?;
                let mut w = NdrWriter::new();
                w.u32(self.backend.unregister(h));
                CallResult::Reply(w.into_bytes())
            }
            opnum::ASYNC_NOTIFY => {
                let h = decode_handle(stub)?;
                match self.backend.async_notify(h, call) {
                    Ok(Some(outcome)) => CallResult::Reply(encode_notify_reply(&outcome)),
                    Ok(None) => CallResult::Pending,
                    Err(status) => {
                        CallResult::Reply(encode_notify_reply(&NotifyOutcome::Error(status)))
                    }
                }
            }
            _ => CallResult::Fault(fault::NCA_S_OP_RNG_ERROR),
        })
    }
}

impl<B: WitnessBackend> RpcInterface for Witness<B> {
    fn syntax(&self) -> SyntaxId {
        WITNESS
    }

    fn call(&mut self, call: CallId, op: u16, stub: &[u8]) -> CallResult {
        match self.run(call, op, stub) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(opnum = op, %e, "witness stub data");
                CallResult::Fault(fault::BAD_STUB_DATA)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ex_decodes_every_field() {
        let mut w = NdrWriter::new();
        w.u32(VERSION_2);
        for s in ["NODE1", "data", "10.0.0.1", "client"] {
            w.referent_id();
            w.conformant_varying_string(s);
        }
        w.u32(REGISTER_IP_NOTIFICATION);
        w.u32(120);
        let r = decode_register(&w.into_bytes(), true).unwrap();
        assert_eq!(r.version, VERSION_2);
        assert_eq!(r.net_name.as_deref(), Some("NODE1"));
        assert_eq!(r.share_name.as_deref(), Some("data"));
        assert_eq!(r.ip_address.as_deref(), Some("10.0.0.1"));
        assert_eq!(r.client_computer_name.as_deref(), Some("client"));
        assert_eq!((r.flags, r.keep_alive_timeout), (1, 120));
    }

    #[test]
    fn register_with_null_strings_and_truncation() {
        let mut w = NdrWriter::new();
        w.u32(VERSION_1);
        w.null_ptr();
        w.null_ptr();
        w.null_ptr();
        let b = w.into_bytes();
        let r = decode_register(&b, false).unwrap();
        assert_eq!(r.net_name, None);
        assert!(decode_register(&b[..10], false).is_err());
        assert!(decode_register(&b, true).is_err());
    }

    #[test]
    fn interface_info_is_552_bytes_with_network_order_addresses() {
        let info = InterfaceInfo {
            group_name: "NODE1".into(),
            version: VERSION_2,
            state: iface_state::AVAILABLE,
            ipv4: Some("10.1.2.3".parse().unwrap()),
            ipv6: None,
            witness: true,
        };
        let b = encode_interface_list(&[info], werror::OK);
        // ptr, count, array ptr, conformance, one entry, status.
        assert_eq!(b.len(), 16 + 552 + 4);
        let e = &b[16..16 + 552];
        assert_eq!(&e[0..2], &[b'N', 0]);
        assert_eq!(&e[528..532], &[10, 1, 2, 3]);
        assert_eq!(
            u32::from_le_bytes(e[548..552].try_into().unwrap()),
            iface_flags::IPV4_VALID | iface_flags::INTERFACE_WITNESS
        );
    }

    #[test]
    fn interface_info_carries_an_ipv6_address() {
        let info = InterfaceInfo {
            group_name: "NODE2".into(),
            version: VERSION_2,
            state: iface_state::UNAVAILABLE,
            ipv4: None,
            ipv6: Some("fd00::2".parse().unwrap()),
            witness: false,
        };
        let b = encode_interface_list(&[info], werror::OK);
        let e = &b[16..16 + 552];
        // State (and 2 bytes of alignment), then IPV4 (zero), IPV6 in network order, Flags =
        // IPv6_VALID only.
        assert_eq!(&e[524..528], &[0xff, 0, 0, 0]);
        assert_eq!(&e[528..532], &[0; 4]);
        assert_eq!(
            &e[532..548],
            &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
        );
        assert_eq!(&e[548..552], &iface_flags::IPV6_VALID.to_le_bytes());
    }

    #[test]
    fn client_move_message_layout() {
        let n = Notification::ClientMove(vec!["192.168.0.9".parse().unwrap()]);
        let (ty, count, buf) = notification_messages(&n);
        assert_eq!((ty, count, buf.len()), (message_type::CLIENT_MOVE, 1, 36));
        assert_eq!(&buf[0..4], &36u32.to_le_bytes());
        assert_eq!(&buf[8..12], &1u32.to_le_bytes());
        assert_eq!(
            &buf[12..16],
            &(ipaddr_flags::V4 | ipaddr_flags::ONLINE).to_le_bytes()
        );
        assert_eq!(&buf[16..20], &[192, 168, 0, 9]);
        let reply = encode_notify_reply(&NotifyOutcome::Notification(n));
        // ptr, type, length, count, ptr, conformance, 36 bytes, status.
        assert_eq!(reply.len(), 24 + 36 + 4);
    }

    #[test]
    fn ip_change_and_share_move_layouts() {
        // One IPv4 address gone offline, one IPv6 address online: hand-checked bytes.
        let n = Notification::IpChange(vec![
            IpAddrInfo {
                addr: "10.0.0.2".parse().unwrap(),
                online: false,
            },
            IpAddrInfo::online("fd00::64".parse().unwrap()),
        ]);
        let (ty, count, buf) = notification_messages(&n);
        assert_eq!((ty, count), (message_type::IP_CHANGE, 1));
        let mut want = vec![60, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0];
        want.extend_from_slice(&[0x11, 0, 0, 0, 10, 0, 0, 2]);
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&[0x0a, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64]);
        assert_eq!(buf, want);
        let (ty, count, same) = notification_messages(&Notification::ShareMove(vec![
            IpAddrInfo {
                addr: "10.0.0.2".parse().unwrap(),
                online: false,
            },
            IpAddrInfo::online("fd00::64".parse().unwrap()),
        ]));
        assert_eq!((ty, count), (message_type::SHARE_MOVE, 1));
        assert_eq!(same, want);
    }

    #[test]
    fn resource_change_message_layout() {
        let n = Notification::ResourceChange(vec![("N1".into(), resource_state::UNAVAILABLE)]);
        let (ty, count, buf) = notification_messages(&n);
        assert_eq!((ty, count), (message_type::RESOURCE_CHANGE, 1));
        assert_eq!(buf, [14, 0, 0, 0, 0xff, 0, 0, 0, b'N', 0, b'1', 0, 0, 0]);
    }
}
