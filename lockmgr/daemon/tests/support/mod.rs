//! An in-process lockmgrd on its own thread, shared by the daemon's integration tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lockmgr_proto::ClusterKey;
use lockmgr_transport::{ServerTransport, Waker};
use lockmgrd::{Server, ServerOptions};

/// A server thread; stopped and joined on drop.
pub struct RunningServer {
    stop: Arc<AtomicBool>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs lockmgrd over `transport` with cluster key `key` (10 s liveness, default engine).
pub fn spawn_server<T: ServerTransport + 'static>(transport: T, key: &[u8]) -> RunningServer {
    let stop = Arc::new(AtomicBool::new(false));
    let waker = transport.waker();
    let flag = Arc::clone(&stop);
    let key = ClusterKey::new(key).expect("test cluster key");
    let thread = std::thread::spawn(move || {
        let mut server = Server::new(
            transport,
            ServerOptions {
                key,
                liveness: Duration::from_secs(10),
                engine: Default::default(),
            },
        );
        server.run(&flag).expect("lockmgrd loop");
    });
    RunningServer {
        stop,
        waker,
        thread: Some(thread),
    }
}
