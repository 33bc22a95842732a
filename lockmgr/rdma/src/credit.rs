//! Credit-based flow control for two-sided SEND/RECV.
//!
//! Every SEND consumes one posted receive at the peer (an RC SEND with no receive posted would
//! stall the QP in RNR retries), so a sender may only post as many SENDs as the peer has told it
//! receive slots are free: one credit per slot. The receiver re-posts a slot as soon as it has
//! consumed the message and *owes* the sender that credit until it says so, either piggy-backed
//! on its next data message or in an explicit credit-only message.
//!
//! A credit-only message is itself a SEND and consumes a credit, which is where the classic
//! deadlock lies (both sides at zero credits, each owing the other). The rules that avoid it
//! (the same idea as MS-SMBD 3.1.5.1's "the last credit is reserved to grant credits"):
//!
//! 1. Data may not use the last credit: sending data needs at least two.
//! 2. A credit-only message may use the last credit, but is only sent when it grants at least
//!    one credit back (`owed > 0`).
//!
//! A side can thus only drop to zero credits by granting the peer at least one, and the peer
//! can only drop to zero in turn by granting back at least one, so both cannot be at zero once
//! the messages in flight have arrived. To keep credit-only traffic from ping-ponging, one is
//! sent only when at least half of our slots are owed, or when the peer, as far as we know,
//! holds at most one credit (and so cannot send data).

/// The peer broke the credit protocol; the connection is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreditError {
    /// The peer sent while it held no credit (it overran our receive ring).
    #[error("peer sent without a credit")]
    Overrun,
    /// The peer granted more credits than it has receive slots.
    #[error("peer granted more credits than its ring holds")]
    OverGrant,
}

/// Credit state of one connection endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credits {
    /// SENDs we may still post.
    send: u32,
    /// The peer's receive slots; `send` can never exceed it.
    peer_slots: u32,
    /// Re-posted receive slots we have not yet announced to the peer.
    owed: u32,
    /// Credits the peer holds as far as we know: granted minus received.
    peer_view: u32,
    /// Our receive slots.
    my_slots: u32,
}

impl Credits {
    /// Fresh connection: each side starts with as many credits as the other posted slots.
    pub fn new(peer_slots: u16, my_slots: u16) -> Credits {
        Credits {
            send: u32::from(peer_slots),
            peer_slots: u32::from(peer_slots),
            owed: 0,
            peer_view: u32::from(my_slots),
            my_slots: u32::from(my_slots),
        }
    }

    /// Credits we currently hold.
    pub fn available(&self) -> u32 {
        self.send
    }

    /// Slots re-posted but not yet announced.
    pub fn owed(&self) -> u32 {
        self.owed
    }

    /// Whether a data message may be sent now (rule 1: the last credit is reserved).
    pub fn can_send_data(&self) -> bool {
        self.send >= 2
    }

    /// Consumes a credit for a data message; returns the grant to put in its header, or `None`
    /// if only the reserved credit (or none) is left.
    pub fn take_data(&mut self) -> Option<u16> {
        if !self.can_send_data() {
            return None;
        }
        self.send -= 1;
        Some(self.take_grant())
    }

    /// Whether an explicit credit update should be sent now.
    pub fn update_due(&self) -> bool {
        self.owed > 0
            && self.send >= 1
            && (self.owed >= (self.my_slots / 2).max(1) || self.peer_view <= 1)
    }

    /// Consumes a credit for a credit-only message; returns its grant (at least 1), or `None`
    /// if no update is due.
    pub fn take_update(&mut self) -> Option<u16> {
        if !self.update_due() {
            return None;
        }
        self.send -= 1;
        Some(self.take_grant())
    }

    fn take_grant(&mut self) -> u16 {
        let g = self.owed.min(u32::from(u16::MAX));
        self.owed -= g;
        self.peer_view += g;
        // `g <= u16::MAX` by the `min` above.
        g as u16
    }

    /// A message (data or credit-only) from the peer arrived carrying `grant`.
    pub fn on_message(&mut self, grant: u16) -> Result<(), CreditError> {
        if self.peer_view == 0 {
            return Err(CreditError::Overrun);
        }
        let send = self.send + u32::from(grant);
        if send > self.peer_slots {
            return Err(CreditError::OverGrant);
        }
        self.peer_view -= 1;
        self.send = send;
        Ok(())
    }

    /// We re-posted the receive slot of a consumed message.
    pub fn on_reposted(&mut self) {
        self.owed += 1;
        debug_assert!(self.owed + self.peer_view <= self.my_slots);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn data_never_takes_the_last_credit() {
        let mut c = Credits::new(4, 4);
        assert_eq!(c.take_data(), Some(0));
        assert_eq!(c.take_data(), Some(0));
        assert_eq!(c.take_data(), Some(0));
        assert_eq!(c.available(), 1);
        assert!(!c.can_send_data());
        assert_eq!(c.take_data(), None);
        assert_eq!(c.available(), 1);
    }

    #[test]
    fn last_credit_may_carry_a_grant() {
        let mut c = Credits::new(4, 4);
        for _ in 0..3 {
            c.take_data();
        }
        assert!(!c.update_due(), "nothing owed: no update");
        assert!(c.on_message(0).is_ok());
        c.on_reposted();
        // The peer holds 3 of our credits; one owed slot is below the half-ring threshold.
        assert!(!c.update_due());
        for _ in 0..2 {
            assert!(c.on_message(0).is_ok());
            c.on_reposted();
        }
        // Peer is down to zero in our view: grant even with the last credit.
        assert!(c.update_due());
        assert_eq!(c.take_update(), Some(3));
        assert_eq!(c.available(), 0);
        assert_eq!(c.owed(), 0);
    }

    #[test]
    fn piggyback_returns_everything_owed() {
        let mut c = Credits::new(8, 8);
        for _ in 0..3 {
            assert!(c.on_message(0).is_ok());
            c.on_reposted();
        }
        assert_eq!(c.take_data(), Some(3));
        assert_eq!(c.owed(), 0);
        assert_eq!(c.take_data(), Some(0));
    }

    #[test]
    fn half_ring_owed_triggers_update() {
        let mut c = Credits::new(8, 8);
        for i in 0..4 {
            assert!(!c.update_due(), "after {i}");
            assert!(c.on_message(0).is_ok());
            c.on_reposted();
        }
        assert!(c.update_due());
    }

    #[test]
    fn overrun_and_overgrant_are_errors() {
        let mut c = Credits::new(4, 4);
        for _ in 0..4 {
            assert!(c.on_message(0).is_ok());
        }
        assert_eq!(c.on_message(0), Err(CreditError::Overrun));

        let mut c = Credits::new(4, 4);
        assert_eq!(c.on_message(1), Err(CreditError::OverGrant));
        c.take_data();
        assert_eq!(c.on_message(1), Ok(()));
        assert_eq!(c.available(), 4);
    }

    /// One side of the simulated connection: credits plus the FIFO towards the peer (RC
    /// delivers in order).
    struct End {
        c: Credits,
        slots: usize,
        data_sent: u64,
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        SendA,
        SendB,
        DeliverToB,
        DeliverToA,
        UpdatesA,
        UpdatesB,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::SendA),
            3 => Just(Op::SendB),
            2 => Just(Op::DeliverToB),
            2 => Just(Op::DeliverToA),
            1 => Just(Op::UpdatesA),
            1 => Just(Op::UpdatesB),
        ]
    }

    /// Delivers the head of `q` to `to`; panics on protocol errors or ring overrun.
    fn deliver(q: &mut VecDeque<u16>, to: &mut End) -> bool {
        match q.pop_front() {
            Some(grant) => {
                to.c.on_message(grant).unwrap();
                to.c.on_reposted();
                true
            }
            None => false,
        }
    }

    fn send_update(from: &mut End, q: &mut VecDeque<u16>) -> bool {
        match from.c.take_update() {
            Some(g) => {
                assert!(g >= 1);
                q.push_back(g);
                true
            }
            None => false,
        }
    }

    proptest! {
        /// Random interleavings (including crossing updates) never overrun a ring, never break
        /// the protocol, quiesce in bounded steps, and leave both sides able to send data.
        #[test]
        fn never_deadlocks(a_slots in 4u16..12, b_slots in 4u16..12,
                           ops in proptest::collection::vec(op(), 0..400)) {
            let mut a = End { c: Credits::new(b_slots, a_slots), slots: a_slots as usize, data_sent: 0 };
            let mut b = End { c: Credits::new(a_slots, b_slots), slots: b_slots as usize, data_sent: 0 };
            let mut a_to_b: VecDeque<u16> = VecDeque::new();
            let mut b_to_a: VecDeque<u16> = VecDeque::new();
            for op in ops {
                match op {
                    Op::SendA => if let Some(g) = a.c.take_data() { a_to_b.push_back(g); a.data_sent += 1; },
                    Op::SendB => if let Some(g) = b.c.take_data() { b_to_a.push_back(g); b.data_sent += 1; },
                    Op::DeliverToB => { deliver(&mut a_to_b, &mut b); }
                    Op::DeliverToA => { deliver(&mut b_to_a, &mut a); }
                    Op::UpdatesA => { send_update(&mut a, &mut a_to_b); }
                    Op::UpdatesB => { send_update(&mut b, &mut b_to_a); }
                }
                prop_assert!(a_to_b.len() <= b.slots, "A overran B's ring");
                prop_assert!(b_to_a.len() <= a.slots, "B overran A's ring");
            }
            // Quiesce the way the transport does: deliver everything, send due updates.
            let mut steps = 0;
            loop {
                let mut progressed = false;
                progressed |= deliver(&mut a_to_b, &mut b);
                progressed |= deliver(&mut b_to_a, &mut a);
                progressed |= send_update(&mut a, &mut a_to_b);
                progressed |= send_update(&mut b, &mut b_to_a);
                if !progressed { break; }
                steps += 1;
                prop_assert!(steps < 10_000, "credit updates ping-pong forever");
            }
            prop_assert!(a.c.can_send_data(), "A stuck: {:?}", a.c);
            prop_assert!(b.c.can_send_data(), "B stuck: {:?}", b.c);
        }
    }
}
