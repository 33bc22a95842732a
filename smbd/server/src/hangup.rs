//! Connections whose client has hung up but whose worker has not torn them down yet.
//!
//! A client that closes one connection and at once opens the same file on another (smbtorture
//! runs each subtest on a new connection: smb2.dir.modify leaves its directory handle open,
//! smb2.dir.sorted's first open of that directory shares no DELETE) has seen the first
//! connection end before it sent the second CREATE; the kernel has its FIN too. But the
//! first connection's opens are closed by its own worker thread (MS-SMB2 3.3.7.1), which may
//! not have run yet: on a loaded machine the second connection's worker answered
//! STATUS_SHARING_VIOLATION from the first one's leftover open. So a CREATE that meets a
//! conflict (a sharing violation, a delete-pending file) while another connection's socket
//! reports its peer gone waits for that connection's teardown and is then decided again
//! (`conn::ops::create`). The kernel's socket state is the signal, not a timer: the wait
//! ends when the worker has processed the end of the transport.
//!
//! The descriptors are the workers' sockets, polled from other threads: a worker removes its
//! connection here ([`Hangups::done`], from `Shared::unregister_conn` or the transport's loss)
//! before it closes the socket, and both that and the poll hold the one mutex, so a polled
//! number is never a reused descriptor.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub struct Hangups {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Connection id -> its socket, while its worker has not processed the transport's end.
    transports: HashMap<u64, RawFd>,
    /// Connection id -> connections waiting for it to be torn down.
    waiters: HashMap<u64, Vec<u64>>,
}

impl Hangups {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data, consistent between calls: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connection `conn` talks over socket `fd` (until [`Hangups::done`]).
    pub fn register(&self, conn: u64, fd: RawFd) {
        self.lock().transports.insert(conn, fd);
    }

    /// The worker has processed the end of `conn`'s transport (its opens are closed, or live
    /// on through other channels): returns the connections that waited for that.
    pub fn done(&self, conn: u64) -> Vec<u64> {
        let mut g = self.lock();
        g.transports.remove(&conn);
        for w in g.waiters.values_mut() {
            w.retain(|c| *c != conn);
        }
        g.waiters.remove(&conn).unwrap_or_default()
    }

    /// The connections other than `waiter` whose client has hung up and which are not torn
    /// down yet; `waiter` is registered to hear of each one's end ([`Hangups::done`]). Empty
    /// if there are none (the usual case: one poll(2) over the registered sockets).
    pub fn wait_for_hung_up(&self, waiter: u64) -> Vec<u64> {
        let mut g = self.lock();
        let (ids, fds): (Vec<u64>, Vec<RawFd>) = g
            .transports
            .iter()
            .filter(|(c, _)| **c != waiter)
            .map(|(c, fd)| (*c, *fd))
            .unzip();
        if ids.is_empty() {
            return Vec::new();
        }
        let gone: Vec<u64> = ids
            .into_iter()
            .zip(crate::sys::hung_up(&fds))
            .filter_map(|(c, h)| h.then_some(c))
            .collect();
        for c in &gone {
            let w = g.waiters.entry(*c).or_default();
            if !w.contains(&waiter) {
                w.push(waiter);
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn only_hung_up_connections_are_waited_for_until_done() {
        let h = Hangups::default();
        let (a, a_peer) = UnixStream::pair().unwrap();
        let (b, _b_peer) = UnixStream::pair().unwrap();
        h.register(1, a.as_raw_fd());
        h.register(2, b.as_raw_fd());
        assert!(h.wait_for_hung_up(3).is_empty());
        drop(a_peer);
        assert_eq!(h.wait_for_hung_up(3), vec![1]);
        // A connection does not wait for itself.
        assert!(h.wait_for_hung_up(1).is_empty());
        assert_eq!(h.done(1), vec![3]);
        assert!(h.wait_for_hung_up(3).is_empty());
        assert!(h.done(2).is_empty());
    }
}
