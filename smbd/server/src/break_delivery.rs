//! Getting an oplock or lease break to a client that has several channels (MS-SMB2 3.3.4.6).
//!
//! A break is sent on one channel of the session whose open (or lease) is broken. If that
//! channel fails before the client's TCP acknowledged the break (the worker's ack check gives
//! up on it, or the socket dies), the break goes out again on the next channel of the session
//! that has not had it yet, until one takes it or none is left. The order is the order the
//! channels were established: the connection that set the session up first, then the bound
//! channels oldest first. That is what the specification asks for and what Samba does by
//! default (smbtorture smb2.multichannel.oplocks.test3_specification, leases.test4); Windows
//! servers send an oplock break on the most recently bound channel only and do not retry
//! (oplocks.test2, test3_windows), which `[server] oplock_break_channels = "latest"` selects
//! ([`ChannelPolicy`]).
//!
//! The frame travels with its delivery record, so a channel that fails hands the record back
//! to the session's owner ([`crate::shared::Event::BreakUndelivered`]), which picks the next
//! channel ([`BreakDelivery::next_channel`]). A break is session-wide data, not per channel:
//! it is unsigned, and encrypted (if at all) with the session's key, so the same bytes fit
//! every channel.

/// Which channels of its session a break goes to (`[server] oplock_break_channels` for oplock
/// breaks; lease breaks always use [`ChannelPolicy::Each`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelPolicy {
    /// Each channel in the order they were established, the next one when a channel fails
    /// before the client's TCP acknowledged the break (MS-SMB2 3.3.4.6; Samba's default).
    #[default]
    Each,
    /// The most recently established channel only, never retried (Windows Server).
    Latest,
}

/// A break notification on its way to the client, with the channels it was sent on.
#[derive(Debug, Clone)]
pub struct BreakDelivery {
    /// The connection that owns the session (and the broken open): it picks the channels.
    pub owner: u64,
    /// The session the break belongs to (0 when no open of the lease is known here: then
    /// only the owner's own transport is a candidate).
    pub session_id: u64,
    /// The whole frame (transport header included), ready for any channel of the session.
    pub frame: Vec<u8>,
    /// The connections it went out on so far, in order.
    pub tried: Vec<u64>,
    pub policy: ChannelPolicy,
}

impl BreakDelivery {
    pub fn new(owner: u64, session_id: u64, frame: Vec<u8>, policy: ChannelPolicy) -> Self {
        BreakDelivery {
            owner,
            session_id,
            frame,
            tried: Vec::new(),
            policy,
        }
    }

    /// The channel to send on next, of `candidates` (the session's live channels, in the
    /// order they were established); None when the break is to be given up.
    pub fn next_channel(&self, candidates: impl IntoIterator<Item = u64>) -> Option<u64> {
        match self.policy {
            ChannelPolicy::Each => candidates.into_iter().find(|c| !self.tried.contains(c)),
            ChannelPolicy::Latest if self.tried.is_empty() => candidates.into_iter().last(),
            ChannelPolicy::Latest => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channel_gets_the_break_once_in_order() {
        let mut d = BreakDelivery::new(1, 7, vec![0; 4], ChannelPolicy::Each);
        let live = [1, 4, 9];
        let mut order = Vec::new();
        while let Some(c) = d.next_channel(live) {
            d.tried.push(c);
            order.push(c);
        }
        assert_eq!(order, [1, 4, 9]);
    }

    #[test]
    fn a_channel_bound_after_the_first_tries_is_still_tried() {
        let mut d = BreakDelivery::new(1, 7, Vec::new(), ChannelPolicy::Each);
        d.tried.extend([1, 4]);
        // Channel 4 failed and is gone; 12 was bound meanwhile.
        assert_eq!(d.next_channel([9, 12]), Some(9));
        d.tried.push(9);
        assert_eq!(d.next_channel([12]), Some(12));
        d.tried.push(12);
        assert_eq!(d.next_channel([]), None);
    }

    #[test]
    fn windows_sends_on_the_latest_channel_once() {
        let mut d = BreakDelivery::new(1, 7, Vec::new(), ChannelPolicy::Latest);
        assert_eq!(d.next_channel([1, 4, 9]), Some(9));
        d.tried.push(9);
        assert_eq!(d.next_channel([1, 4]), None, "not retried");
    }
}
