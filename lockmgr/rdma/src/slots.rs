//! Which slots of a queue pair's registered memory the HCA owns: the bookkeeping that makes
//! lending slot memory to Rust safe (see [`crate::qp`]), kept free of verbs calls so it can be
//! tested without a device.
//!
//! Slots are numbered per direction (receive slot 0.., send slot 0..); the registered region
//! holds the receive slots first. A slot is *posted* from the moment its work request is handed
//! to the HCA until the completion carrying its `wr_id` is polled.

/// `wr_id` bit marking send work requests (receives carry the bare slot index).
const SEND_BIT: u64 = 1 << 63;
/// `wr_id` slot of inline sends (no slot to free).
const INLINE_SLOT: u32 = u32::MAX;

/// Which work request a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkRequest {
    /// A receive into this receive slot.
    Recv { slot: u32 },
    /// A send, from this send slot (`None`: inline, or a slot this book does not know).
    Send { slot: Option<u32> },
    /// A receive `wr_id` this book never handed out: nothing to give back.
    Unknown,
}

/// Posted/free state of every slot, and the `wr_id` encoding that ties completions to slots.
#[derive(Debug)]
pub(crate) struct SlotBook {
    recv: u32,
    send: u32,
    /// Receive slots, then send slots: a work request on the slot is outstanding.
    posted: Vec<bool>,
}

impl SlotBook {
    pub(crate) fn new(recv: u32, send: u32) -> SlotBook {
        SlotBook {
            recv,
            send,
            posted: vec![false; recv as usize + send as usize],
        }
    }

    /// Position of receive slot `slot` in the region (in slots), if it exists and is not
    /// posted: the slot may be read, or posted with [`Self::recv_wr_id`].
    pub(crate) fn free_recv(&self, slot: u32) -> Option<usize> {
        let index = slot as usize;
        (slot < self.recv && !self.posted[index]).then_some(index)
    }

    /// Position of send slot `slot` in the region (in slots), if it exists and is not posted:
    /// the slot may be written, or posted with [`Self::send_wr_id`].
    pub(crate) fn free_send(&self, slot: u32) -> Option<usize> {
        let index = self.recv as usize + slot as usize;
        (slot < self.send && !self.posted[index]).then_some(index)
    }

    pub(crate) fn recv_wr_id(slot: u32) -> u64 {
        u64::from(slot)
    }

    pub(crate) fn send_wr_id(slot: u32) -> u64 {
        SEND_BIT | u64::from(slot)
    }

    pub(crate) fn inline_wr_id() -> u64 {
        SEND_BIT | u64::from(INLINE_SLOT)
    }

    /// Records that the work request on the slot at region position `index` went to the HCA.
    pub(crate) fn mark_posted(&mut self, index: usize) {
        self.posted[index] = true;
    }

    /// Decodes a completed `wr_id` and marks its slot free again: after a completion, success or
    /// flush error, the HCA no longer touches the slot.
    pub(crate) fn complete(&mut self, wr_id: u64) -> WorkRequest {
        let slot = wr_id as u32;
        if wr_id & SEND_BIT != 0 {
            if slot == INLINE_SLOT || slot >= self.send {
                return WorkRequest::Send { slot: None };
            }
            self.posted[self.recv as usize + slot as usize] = false;
            return WorkRequest::Send { slot: Some(slot) };
        }
        if wr_id >> 32 != 0 || slot >= self.recv {
            return WorkRequest::Unknown;
        }
        self.posted[slot as usize] = false;
        WorkRequest::Recv { slot }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post_recv(book: &mut SlotBook, slot: u32) -> u64 {
        let index = book.free_recv(slot).expect("receive slot free");
        book.mark_posted(index);
        SlotBook::recv_wr_id(slot)
    }

    fn post_send(book: &mut SlotBook, slot: u32) -> u64 {
        let index = book.free_send(slot).expect("send slot free");
        book.mark_posted(index);
        SlotBook::send_wr_id(slot)
    }

    #[test]
    fn posted_receive_is_lent_out_only_after_its_completion() {
        let mut book = SlotBook::new(4, 2);
        assert_eq!(book.free_recv(1), Some(1));
        let wr_id = post_recv(&mut book, 1);
        assert_eq!(book.free_recv(1), None, "HCA owns a posted receive");
        assert_eq!(book.complete(wr_id), WorkRequest::Recv { slot: 1 });
        assert_eq!(book.free_recv(1), Some(1));
    }

    #[test]
    fn send_and_receive_slots_with_one_number_are_distinct() {
        let mut book = SlotBook::new(4, 2);
        let recv = post_recv(&mut book, 0);
        let send = post_send(&mut book, 0);
        assert_ne!(recv, send);
        // The send slot sits behind the receive slots in the region.
        assert_eq!(book.complete(send), WorkRequest::Send { slot: Some(0) });
        assert_eq!(book.free_send(0), Some(4));
        assert_eq!(book.free_recv(0), None, "the receive is still posted");
        assert_eq!(book.complete(recv), WorkRequest::Recv { slot: 0 });
        assert_eq!(book.free_recv(0), Some(0));
    }

    #[test]
    fn inline_send_completion_frees_no_slot() {
        let mut book = SlotBook::new(2, 2);
        let send = post_send(&mut book, 1);
        assert_eq!(
            book.complete(SlotBook::inline_wr_id()),
            WorkRequest::Send { slot: None }
        );
        assert_eq!(
            book.free_send(1),
            None,
            "the slot send is still outstanding"
        );
        assert_eq!(book.complete(send), WorkRequest::Send { slot: Some(1) });
    }

    #[test]
    fn foreign_wr_ids_free_nothing() {
        let mut book = SlotBook::new(2, 2);
        let recv = post_recv(&mut book, 1);
        let send = post_send(&mut book, 1);
        assert_eq!(book.complete(2), WorkRequest::Unknown);
        assert_eq!(book.complete(1 << 32 | 1), WorkRequest::Unknown);
        assert_eq!(
            book.complete(SlotBook::send_wr_id(2)),
            WorkRequest::Send { slot: None }
        );
        assert_eq!(book.free_recv(1), None);
        assert_eq!(book.free_send(1), None);
        assert_eq!(book.complete(recv), WorkRequest::Recv { slot: 1 });
        assert_eq!(book.complete(send), WorkRequest::Send { slot: Some(1) });
    }

    #[test]
    fn slots_beyond_the_layout_are_refused() {
        let book = SlotBook::new(2, 3);
        assert_eq!(book.free_recv(2), None);
        assert_eq!(book.free_send(3), None);
        assert_eq!(book.free_send(2), Some(4));
    }
}
