//! Security descriptors on the wire: the self-relative SECURITY_DESCRIPTOR (MS-DTYP 2.4.6),
//! its ACL (2.4.5), the ACEs in it (2.4.4) and SIDs (2.4.2.2).
//!
//! Only the parts an SMB server stores are decoded: owner, group and DACL. The SACL is neither
//! decoded nor encoded (its offset is written as 0). An [`Acl`] keeps its wire bytes as
//! received, so a DACL set by a client is returned byte for byte, ACE types this crate does not
//! interpret (object ACEs, callback ACEs) included; its ACEs are read with [`Acl::aces`].
//!
//! Which access an ACL grants, and what a server fills in for parts never set, is policy and
//! lives in the server (smbd's `sd.rs`).

use std::fmt;

use crate::cursor::{DecodeError, Reader, Writer};

/// SECURITY_INFORMATION bits (MS-DTYP 2.4.7) selecting the parts of a descriptor.
pub const OWNER_SECURITY_INFORMATION: u32 = 1;
pub const GROUP_SECURITY_INFORMATION: u32 = 2;
pub const DACL_SECURITY_INFORMATION: u32 = 4;
/// Owner, group and DACL: every part this codec handles.
pub const ALL_SECURITY_INFORMATION: u32 =
    OWNER_SECURITY_INFORMATION | GROUP_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION;

/// SECURITY_DESCRIPTOR control bits (MS-DTYP 2.4.6).
pub mod control {
    pub const SE_DACL_PRESENT: u16 = 0x0004;
    pub const SE_SELF_RELATIVE: u16 = 0x8000;
}

/// ACE types (MS-DTYP 2.4.4.1) the access check evaluates.
pub mod ace_type {
    pub const ACCESS_ALLOWED: u8 = 0;
    pub const ACCESS_DENIED: u8 = 1;
}

/// ACE flags (MS-DTYP 2.4.4.1).
pub mod ace_flags {
    pub const OBJECT_INHERIT: u8 = 0x01;
    pub const CONTAINER_INHERIT: u8 = 0x02;
    pub const NO_PROPAGATE_INHERIT: u8 = 0x04;
    pub const INHERIT_ONLY: u8 = 0x08;
    pub const INHERITED: u8 = 0x10;
}

/// Size of the fixed SECURITY_DESCRIPTOR header (revision, Sbz1, control, four offsets).
const SD_HEADER_LEN: usize = 20;
/// Size of the ACL header (revision, Sbz1, AclSize, AceCount, Sbz2).
const ACL_HEADER_LEN: usize = 8;
/// Size of an ACE header plus its access mask, the part every ACE type starts with.
const ACE_FIXED_LEN: usize = 8;
/// ACL revisions (MS-DTYP 2.4.5): ACL_REVISION and ACL_REVISION_DS.
const ACL_REVISION: u8 = 2;
const ACL_REVISION_DS: u8 = 4;

/// A security identifier (MS-DTYP 2.4.2.2): revision 1, a 48-bit identifier authority and at
/// most [`Sid::MAX_SUB_AUTHORITIES`] sub-authorities.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid {
    authority: [u8; 6],
    count: u8,
    // Entries past `count` are always zero, so the derived equality compares the SID.
    sub_authorities: [u32; Sid::MAX_SUB_AUTHORITIES],
}

impl Sid {
    pub const MAX_SUB_AUTHORITIES: usize = 15;

    /// S-1-`authority`-`subs`...; a SID with more than 15 sub-authorities does not compile.
    pub const fn new<const N: usize>(authority: u64, subs: [u32; N]) -> Sid {
        const { assert!(N <= Sid::MAX_SUB_AUTHORITIES) };
        let a = authority.to_be_bytes();
        let mut sub_authorities = [0u32; Sid::MAX_SUB_AUTHORITIES];
        let mut i = 0;
        while i < N {
            sub_authorities[i] = subs[i];
            i += 1;
        }
        Sid {
            authority: [a[2], a[3], a[4], a[5], a[6], a[7]],
            count: N as u8,
            sub_authorities,
        }
    }

    /// The identifier authority (big-endian on the wire).
    pub fn authority(&self) -> u64 {
        self.authority
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }

    pub fn sub_authorities(&self) -> &[u32] {
        &self.sub_authorities[..self.count as usize]
    }

    /// Bytes of the wire form: 8 plus 4 per sub-authority.
    pub fn encoded_len(&self) -> usize {
        8 + 4 * self.count as usize
    }

    /// Read one SID at the reader's position; bytes after it are left unread.
    pub fn decode(r: &mut Reader<'_>) -> Result<Sid, DecodeError> {
        let revision = r.u8()?;
        let count = r.u8()?;
        if revision != 1 || count as usize > Sid::MAX_SUB_AUTHORITIES {
            return Err(DecodeError::InvalidSid);
        }
        let mut authority = [0u8; 6];
        authority.copy_from_slice(r.bytes(6)?);
        let mut sub_authorities = [0u32; Sid::MAX_SUB_AUTHORITIES];
        for s in sub_authorities.iter_mut().take(count as usize) {
            *s = r.u32()?;
        }
        Ok(Sid {
            authority,
            count,
            sub_authorities,
        })
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u8(1).u8(self.count).bytes(&self.authority);
        for s in self.sub_authorities() {
            w.u32(*s);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.buf
    }
}

/// The string form, S-1-5-11.
impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S-1-{}", self.authority())?;
        for s in self.sub_authorities() {
            write!(f, "-{s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Well-known SIDs (MS-DTYP 2.4.2.4).
pub mod well_known {
    use super::Sid;
    /// S-1-1-0, Everyone.
    pub const EVERYONE: Sid = Sid::new(1, [0]);
    /// S-1-3-0, CREATOR OWNER.
    pub const CREATOR_OWNER: Sid = Sid::new(3, [0]);
    /// S-1-5-11, Authenticated Users.
    pub const AUTHENTICATED_USERS: Sid = Sid::new(5, [11]);
}

/// One ACE as it sits in an [`Acl`] (MS-DTYP 2.4.4). Every ACE type starts with the header and
/// an access mask; for ACCESS_ALLOWED and ACCESS_DENIED ACEs the rest is the trustee's SID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AceRef<'a> {
    pub ace_type: u8,
    pub flags: u8,
    pub mask: u32,
    /// What follows the mask (AceSize - 8 bytes).
    pub rest: &'a [u8],
}

impl<'a> AceRef<'a> {
    /// The SID at the start of [`Self::rest`] (the trustee of an ACCESS_ALLOWED/DENIED ACE) and
    /// the bytes after it, which such an ACE normally does not have.
    pub fn sid(&self) -> Result<(Sid, &'a [u8]), DecodeError> {
        let mut r = Reader::new(self.rest);
        let sid = Sid::decode(&mut r)?;
        Ok((sid, self.rest.get(r.pos()..).unwrap_or_default()))
    }

    /// An owned copy, to edit (inheritance changes the flags) and encode into a new ACL.
    pub fn to_ace(&self) -> Ace {
        Ace {
            ace_type: self.ace_type,
            flags: self.flags,
            mask: self.mask,
            rest: self.rest.to_vec(),
        }
    }
}

/// An ACE to encode. `rest` is private: it never exceeds what an ACE's 16-bit size can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ace {
    pub ace_type: u8,
    pub flags: u8,
    pub mask: u32,
    rest: Vec<u8>,
}

impl Ace {
    /// An ACE whose body is the access mask and the trustee `sid` (ACCESS_ALLOWED,
    /// ACCESS_DENIED and the other basic ACE types).
    pub fn new(ace_type: u8, flags: u8, mask: u32, sid: &Sid) -> Ace {
        Ace {
            ace_type,
            flags,
            mask,
            rest: sid.to_bytes(),
        }
    }

    pub fn encoded_len(&self) -> usize {
        ACE_FIXED_LEN + self.rest.len()
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u8(self.ace_type)
            .u8(self.flags)
            .u16(self.encoded_len() as u16)
            .u32(self.mask)
            .bytes(&self.rest);
    }
}

/// An ACL in its wire form (MS-DTYP 2.4.5). Invariants: at least the 8-byte header, revision 2
/// or 4, and the AclSize field equal to the length of the bytes held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    bytes: Vec<u8>,
}

impl Acl {
    /// Read the ACL at the start of `b` (AclSize bytes of it). The ACEs are not checked here:
    /// [`Acl::aces`] reads them.
    pub fn decode(b: &[u8]) -> Result<Acl, DecodeError> {
        let mut r = Reader::new(b);
        let revision = r.u8()?;
        r.skip(1)?;
        let size = r.u16()? as usize;
        r.skip(4)?;
        if !matches!(revision, ACL_REVISION | ACL_REVISION_DS) || size < ACL_HEADER_LEN {
            return Err(DecodeError::InvalidAcl);
        }
        let bytes = b.get(..size).ok_or(DecodeError::Truncated)?;
        Ok(Acl {
            bytes: bytes.to_vec(),
        })
    }

    /// A revision-2 ACL holding `aces` in order; `None` if they do not fit the 16-bit AclSize.
    pub fn from_aces<'a>(aces: impl IntoIterator<Item = &'a Ace>) -> Option<Acl> {
        let mut w = Writer::new();
        w.u8(ACL_REVISION).u8(0).u16(0).u16(0).u16(0);
        let mut count = 0u16;
        for ace in aces {
            ace.encode(&mut w);
            count = count.checked_add(1)?;
        }
        let size = u16::try_from(w.len()).ok()?;
        w.set_u16(2, size);
        w.set_u16(4, count);
        Some(Acl { bytes: w.buf })
    }

    pub fn revision(&self) -> u8 {
        self.bytes[0]
    }

    /// The AceCount field.
    pub fn ace_count(&self) -> u16 {
        u16::from_le_bytes([self.bytes[4], self.bytes[5]])
    }

    /// The ACEs in order: AceCount of them, ending early at the first one whose header or
    /// AceSize does not fit the ACL (or is smaller than header and mask).
    pub fn aces(&self) -> Aces<'_> {
        Aces {
            acl: &self.bytes,
            offset: ACL_HEADER_LEN,
            left: self.ace_count(),
        }
    }

    /// The wire bytes, header included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Iterator over the ACEs of an [`Acl`].
#[derive(Debug, Clone)]
pub struct Aces<'a> {
    acl: &'a [u8],
    offset: usize,
    left: u16,
}

impl<'a> Iterator for Aces<'a> {
    type Item = AceRef<'a>;

    fn next(&mut self) -> Option<AceRef<'a>> {
        if self.left == 0 {
            return None;
        }
        let mut r = Reader::at(self.acl, self.offset);
        let parsed = (|| -> Result<AceRef<'a>, DecodeError> {
            let ace_type = r.u8()?;
            let flags = r.u8()?;
            let size = r.u16()? as usize;
            let mask = r.u32()?;
            let rest_len = size
                .checked_sub(ACE_FIXED_LEN)
                .ok_or(DecodeError::Invalid("ACE size"))?;
            let rest = r.bytes(rest_len)?;
            Ok(AceRef {
                ace_type,
                flags,
                mask,
                rest,
            })
        })();
        match parsed {
            Ok(ace) => {
                self.left -= 1;
                self.offset = r.pos();
                Some(ace)
            }
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }
}

/// The DACL part of a descriptor that has one (SE_DACL_PRESENT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dacl {
    /// DACL present with offset 0: a NULL DACL, which restricts nothing.
    Null,
    Acl(Acl),
}

/// The owner, group and DACL of a self-relative security descriptor; `None` is a part the
/// descriptor does not carry (offset 0, or for the DACL SE_DACL_PRESENT clear).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityDescriptor {
    pub owner: Option<Sid>,
    pub group: Option<Sid>,
    pub dacl: Option<Dacl>,
}

impl SecurityDescriptor {
    /// Decode the parts of self-relative descriptor `b` selected by `which`
    /// (`*_SECURITY_INFORMATION` bits). Parts not selected are not looked at, so a request
    /// that sets only the DACL may carry anything at the owner offset.
    pub fn decode(b: &[u8], which: u32) -> Result<SecurityDescriptor, DecodeError> {
        let mut r = Reader::new(b);
        let revision = r.u8()?;
        if b.len() < SD_HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if revision != 1 {
            return Err(DecodeError::Invalid("security descriptor revision"));
        }
        r.skip(1)?;
        let control = r.u16()?;
        let owner_at = r.u32()? as usize;
        let group_at = r.u32()? as usize;
        let _sacl_at = r.u32()?;
        let dacl_at = r.u32()? as usize;
        let sid_at = |at: usize| Sid::decode(&mut Reader::at(b, at));
        let mut sd = SecurityDescriptor::default();
        if which & OWNER_SECURITY_INFORMATION != 0 && owner_at != 0 {
            sd.owner = Some(sid_at(owner_at)?);
        }
        if which & GROUP_SECURITY_INFORMATION != 0 && group_at != 0 {
            sd.group = Some(sid_at(group_at)?);
        }
        if which & DACL_SECURITY_INFORMATION != 0 && control & control::SE_DACL_PRESENT != 0 {
            sd.dacl = Some(if dacl_at == 0 {
                Dacl::Null
            } else {
                Dacl::Acl(Acl::decode(
                    b.get(dacl_at..).ok_or(DecodeError::Truncated)?,
                )?)
            });
        }
        Ok(sd)
    }

    /// Encode the parts present, in the order owner, group, DACL, as a self-relative
    /// descriptor; absent parts get offset 0 (and no SE_DACL_PRESENT for the DACL).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(1).u8(0).u16(0).zeros(4 * 4);
        let mut control = control::SE_SELF_RELATIVE;
        if let Some(owner) = &self.owner {
            w.set_u32(4, w.len() as u32);
            owner.encode(&mut w);
        }
        if let Some(group) = &self.group {
            w.set_u32(8, w.len() as u32);
            group.encode(&mut w);
        }
        if let Some(dacl) = &self.dacl {
            control |= control::SE_DACL_PRESENT;
            if let Dacl::Acl(acl) = dacl {
                w.set_u32(16, w.len() as u32);
                w.bytes(acl.as_bytes());
            }
        }
        w.set_u16(2, control);
        w.buf
    }
}

/// Decode `data` as a descriptor (all parts, and the parts selected by its second byte, the
/// Sbz1 field the decoder ignores), encode it and decode that again (the fuzz target's property, also replayed over the checked-in corpus).
/// `Ok(true)` when `data` decoded, `Err` names the property that failed.
pub fn check_round_trip(data: &[u8]) -> Result<bool, &'static str> {
    let which = data.get(1).map_or(0, |b| u32::from(*b)) & ALL_SECURITY_INFORMATION;
    for which in [ALL_SECURITY_INFORMATION, which] {
        let _ = SecurityDescriptor::decode(data, which);
    }
    let Ok(first) = SecurityDescriptor::decode(data, ALL_SECURITY_INFORMATION) else {
        return Ok(false);
    };
    let bytes = first.encode();
    let second = SecurityDescriptor::decode(&bytes, ALL_SECURITY_INFORMATION)
        .map_err(|_| "an encoded descriptor does not decode")?;
    if second != first {
        return Err("decode(encode(sd)) differs from sd");
    }
    if second.encode() != bytes {
        return Err("encoding is not stable");
    }
    if let Some(Dacl::Acl(acl)) = &first.dacl {
        let aces: Vec<Ace> = acl.aces().map(|a| a.to_ace()).collect();
        if aces.len() > acl.ace_count() as usize {
            return Err("more ACEs than AceCount");
        }
        for ace in acl.aces() {
            let _ = ace.sid();
        }
        let rebuilt = Acl::from_aces(&aces).ok_or("ACEs read from an ACL do not fit one")?;
        let again: Vec<Ace> = rebuilt.aces().map(|a| a.to_ace()).collect();
        if again != aces {
            return Err("ACEs differ after Acl::from_aces");
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::well_known::*;
    use super::*;

    fn acl(aces: &[Ace]) -> Acl {
        Acl::from_aces(aces).unwrap()
    }

    #[test]
    fn sid_wire_form_and_string() {
        let sid = Sid::new(22, [1, 1000]);
        let b = sid.to_bytes();
        assert_eq!(
            b,
            [1, 2, 0, 0, 0, 0, 0, 22, 1, 0, 0, 0, 0xe8, 3, 0, 0].to_vec()
        );
        assert_eq!(sid.encoded_len(), b.len());
        assert_eq!(Sid::decode(&mut Reader::new(&b)).unwrap(), sid);
        assert_eq!(sid.to_string(), "S-1-22-1-1000");
        assert_eq!(EVERYONE.to_bytes(), [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        // Revision other than 1, or more than 15 sub-authorities: not a SID.
        assert_eq!(
            Sid::decode(&mut Reader::new(&[2, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])),
            Err(DecodeError::InvalidSid)
        );
        assert_eq!(
            Sid::decode(&mut Reader::new(&[1, 16, 0, 0, 0, 0, 0, 1])),
            Err(DecodeError::InvalidSid)
        );
        assert_eq!(
            Sid::decode(&mut Reader::new(&b[..b.len() - 1])),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn full_descriptor_round_trips_with_layout() {
        let dacl = acl(&[Ace::new(
            ace_type::ACCESS_ALLOWED,
            0,
            0x001F_01FF,
            &EVERYONE,
        )]);
        let sd = SecurityDescriptor {
            owner: Some(Sid::new(22, [1, 1000])),
            group: Some(EVERYONE),
            dacl: Some(Dacl::Acl(dacl.clone())),
        };
        let b = sd.encode();
        // Header, then owner (16 bytes), group (12), DACL: offsets 20, 36, 0 (SACL), 48.
        assert_eq!(&b[..4], &[1, 0, 0x04, 0x80]);
        assert_eq!(
            &b[4..20],
            &[20, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0, 48, 0, 0, 0]
        );
        assert_eq!(&b[48..], dacl.as_bytes());
        assert_eq!(
            SecurityDescriptor::decode(&b, ALL_SECURITY_INFORMATION).unwrap(),
            sd
        );
        // Only the selected parts are decoded.
        let only_owner = SecurityDescriptor::decode(&b, OWNER_SECURITY_INFORMATION).unwrap();
        assert_eq!(only_owner.owner, sd.owner);
        assert_eq!((only_owner.group, only_owner.dacl), (None, None));
        assert_eq!(check_round_trip(&b), Ok(true));
    }

    #[test]
    fn null_dacl_absent_parts_and_garbage() {
        let sd = SecurityDescriptor {
            dacl: Some(Dacl::Null),
            ..Default::default()
        };
        let b = sd.encode();
        assert_eq!(b.len(), 20);
        assert_eq!(&b[2..4], &[0x04, 0x80]);
        assert_eq!(
            SecurityDescriptor::decode(&b, ALL_SECURITY_INFORMATION).unwrap(),
            sd
        );
        let empty = SecurityDescriptor::default().encode();
        assert_eq!(&empty[2..4], &[0, 0x80]);
        assert_eq!(
            SecurityDescriptor::decode(&empty, ALL_SECURITY_INFORMATION).unwrap(),
            SecurityDescriptor::default()
        );
        assert_eq!(
            SecurityDescriptor::decode(&[1, 0, 0], ALL_SECURITY_INFORMATION),
            Err(DecodeError::Truncated)
        );
        let mut bad_rev = empty.clone();
        bad_rev[0] = 2;
        assert!(SecurityDescriptor::decode(&bad_rev, ALL_SECURITY_INFORMATION).is_err());
    }

    #[test]
    fn bad_parts_are_named() {
        let sd = SecurityDescriptor {
            owner: Some(EVERYONE),
            dacl: Some(Dacl::Acl(acl(&[]))),
            ..Default::default()
        };
        let b = sd.encode();
        let mut bad_sid = b.clone();
        bad_sid[20] = 2;
        assert_eq!(
            SecurityDescriptor::decode(&bad_sid, ALL_SECURITY_INFORMATION),
            Err(DecodeError::InvalidSid)
        );
        // The owner is not looked at when only the DACL is asked for.
        assert!(SecurityDescriptor::decode(&bad_sid, DACL_SECURITY_INFORMATION).is_ok());
        let mut bad_acl = b.clone();
        bad_acl[32] = 3;
        assert_eq!(
            SecurityDescriptor::decode(&bad_acl, ALL_SECURITY_INFORMATION),
            Err(DecodeError::InvalidAcl)
        );
        let mut far_owner = b.clone();
        far_owner[4] = 200;
        assert_eq!(
            SecurityDescriptor::decode(&far_owner, ALL_SECURITY_INFORMATION),
            Err(DecodeError::Truncated)
        );
        let mut long_acl = b;
        long_acl[34] = 9;
        assert_eq!(
            SecurityDescriptor::decode(&long_acl, ALL_SECURITY_INFORMATION),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn aces_read_in_order_and_stop_at_a_bad_one() {
        let a = Ace::new(
            ace_type::ACCESS_DENIED,
            ace_flags::INHERITED,
            0x2,
            &EVERYONE,
        );
        let b = Ace::new(ace_type::ACCESS_ALLOWED, 0, 0x3, &AUTHENTICATED_USERS);
        let list = acl(&[a.clone(), b.clone()]);
        assert_eq!((list.revision(), list.ace_count()), (2, 2));
        let got: Vec<Ace> = list.aces().map(|x| x.to_ace()).collect();
        assert_eq!(got, vec![a, b]);
        let first = list.aces().next().unwrap();
        assert_eq!(first.sid().unwrap(), (EVERYONE, &[][..]));
        // AceSize below header and mask ends the walk; so does an ACE past the ACL's end.
        let mut bytes = list.as_bytes().to_vec();
        bytes[8 + 2] = 4;
        assert_eq!(Acl::decode(&bytes).unwrap().aces().count(), 0);
        let mut bytes = list.as_bytes().to_vec();
        bytes[8 + 20 + 2] = 200;
        assert_eq!(Acl::decode(&bytes).unwrap().aces().count(), 1);
        // More ACEs claimed than present: the ones present are read.
        let mut bytes = list.as_bytes().to_vec();
        bytes[4] = 5;
        assert_eq!(Acl::decode(&bytes).unwrap().aces().count(), 2);
    }

    #[test]
    fn unknown_ace_types_keep_their_bytes() {
        // An object ACE (type 5): mask, flags, GUID, SID. Decoded and rebuilt unchanged.
        let mut raw = vec![5u8, 0, 0, 0];
        raw.extend_from_slice(&0x10u32.to_le_bytes());
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&[0xAB; 16]);
        raw.extend_from_slice(&EVERYONE.to_bytes());
        let size = raw.len() as u16;
        raw[2..4].copy_from_slice(&size.to_le_bytes());
        let mut bytes = vec![4u8, 0];
        bytes.extend_from_slice(&(8 + size).to_le_bytes());
        bytes.extend_from_slice(&[1, 0, 0, 0]);
        bytes.extend_from_slice(&raw);
        let decoded = Acl::decode(&bytes).unwrap();
        assert_eq!(decoded.as_bytes(), &bytes[..]);
        let ace = decoded.aces().next().unwrap();
        assert_eq!((ace.ace_type, ace.mask, ace.rest.len()), (5, 0x10, 32));
        let rebuilt = Acl::from_aces(&[ace.to_ace()]).unwrap();
        assert_eq!(&rebuilt.as_bytes()[8..], &raw[..]);
    }
}
