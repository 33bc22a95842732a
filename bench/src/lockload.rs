//! Load generation against lockmgrd: closed loop (one batch in flight per client) and open loop
//! (requests sent at scheduled times; latency measured from the scheduled time, which is the
//! coordinated-omission correction).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lockmgr_client::{ClientError, Event, LockClient};
use lockmgr_engine::{
    access, share, FileId, LockRange, Notification, OpenId, OpenRequest, Reply, Request, RequestId,
};
use lockmgr_transport::ClientTransport;
use rand::distributions::Distribution;
use rand::{Rng, SeedableRng};

use crate::report::{new_histogram, record};

/// Which files the clients hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Every client has its own file and ranges: no conflicts.
    Uncontended,
    /// Every client locks the same range of the same file: constant conflicts.
    Hot,
    /// Files chosen with a Zipf(1.0) distribution over `ZIPF_FILES` files, shared by all clients.
    Zipf,
}

/// What one measured operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A byte-range lock or an unlock (each one operation).
    Lock,
    /// An open or a close (each one operation).
    Open,
    /// Open, lock, I/O check, unlock, close in turn.
    Mixed,
}

pub const ZIPF_FILES: u64 = 1000;

/// File ids used by the benchmark: client `c`'s private file, or shared file `i`.
pub fn private_file(client: usize) -> FileId {
    FileId(0x1000_0000_0000 + client as u128)
}

pub fn shared_file(i: u64) -> FileId {
    FileId(0x2000_0000_0000 + i as u128)
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub client_index: usize,
    pub pattern: Pattern,
    pub op: Op,
    pub duration: Duration,
    /// Requests per frame in closed-loop mode.
    pub batch: usize,
    /// Closed loop: batches in flight at once (pipelining; 1 = send, wait, send). With more
    /// than one, client and server work at the same time instead of taking turns. Keep
    /// `batch * depth` under 2048 with the uncontended pattern, or a client's own ranges
    /// (4096 slots) come round again while still locked and count as conflicts.
    pub depth: usize,
    /// Open loop: operations per second for this client (None: closed loop).
    pub rate: Option<f64>,
    pub seed: u64,
}

#[derive(Debug)]
pub struct LoadResult {
    pub hist: Histogram<u64>,
    pub ops: u64,
    pub conflicts: u64,
    pub elapsed: Duration,
}

pub fn open_request(file: FileId) -> Request {
    Request::Open(OpenRequest {
        file,
        access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
        share: share::READ | share::WRITE | share::DELETE,
        ..OpenRequest::default()
    })
}

/// Opens `file` and returns the open id.
pub fn open_file<T: ClientTransport>(
    c: &mut LockClient<T>,
    file: FileId,
) -> Result<OpenId, String> {
    match c
        .call(open_request(file), Duration::from_secs(10))
        .map_err(|e| e.to_string())?
    {
        Reply::Opened { open, .. } => Ok(open),
        other => Err(format!("open of {file:?} refused: {other:?}")),
    }
}

/// Takes `count` shared... exclusive, non-overlapping locks far above the measured ranges, in
/// batches, so the engine's tables hold that many locks during the measurement.
pub fn preload_locks<T: ClientTransport>(
    c: &mut LockClient<T>,
    opens: &[OpenId],
    count: u64,
) -> Result<(), String> {
    const BATCH: u64 = 256;
    let mut done = 0u64;
    while done < count {
        let n = BATCH.min(count - done);
        for i in done..done + n {
            let open = opens[(i % opens.len() as u64) as usize];
            let offset = (1u64 << 40) + i * 16;
            c.submit(Request::Lock {
                open,
                ranges: vec![LockRange {
                    offset,
                    length: 8,
                    exclusive: true,
                }],
                fail_immediately: true,
            })
            .map_err(|e| e.to_string())?;
        }
        c.flush().map_err(|e| e.to_string())?;
        let mut replies = 0u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while replies < n {
            c.poll(&mut |ev| {
                if matches!(ev, Event::Reply { .. }) {
                    replies += 1;
                }
            })
            .map_err(|e| e.to_string())?;
            if Instant::now() > deadline {
                return Err("preload timed out".into());
            }
            if replies < n {
                c.wait(Some(Duration::from_millis(10)))
                    .map_err(|e| e.to_string())?;
            }
        }
        done += n;
    }
    Ok(())
}

/// The files a client touches, and the open it holds for each.
pub struct Workset {
    pub files: Vec<(FileId, OpenId)>,
}

pub fn setup_workset<T: ClientTransport>(
    c: &mut LockClient<T>,
    spec: &LoadSpec,
) -> Result<Workset, String> {
    let files: Vec<FileId> = match spec.pattern {
        Pattern::Uncontended => vec![private_file(spec.client_index)],
        Pattern::Hot => vec![shared_file(0)],
        Pattern::Zipf => (0..ZIPF_FILES).map(shared_file).collect(),
    };
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        out.push((f, open_file(c, f)?));
    }
    Ok(Workset { files: out })
}

/// Zipf(s=1) sampler over `n` items by inverse CDF (n is small: a table is fine).
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u64) -> Zipf {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / k as f64;
            cdf.push(sum);
        }
        for v in &mut cdf {
            *v /= sum;
        }
        Zipf { cdf }
    }
}

impl Distribution<usize> for Zipf {
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.gen();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// One step of a client's operation sequence. Locks and unlocks are sent with
/// `LockClient::submit_lock` / `submit_unlock`, which encode the range straight into the frame
/// (no `Request`, no `Vec` per operation): the client's own cost is part of every measurement.
#[derive(Clone, Copy, Debug)]
enum Step {
    Lock {
        open: OpenId,
        range: LockRange,
    },
    Unlock {
        open: OpenId,
        range: LockRange,
    },
    Open {
        file: FileId,
    },
    /// The open id comes from the open's reply (see [`Outcome::Opened`]).
    Close,
}

impl Step {
    fn submit<T: ClientTransport>(
        &self,
        c: &mut LockClient<T>,
        outcome: Outcome,
    ) -> Result<RequestId, ClientError> {
        match *self {
            Step::Lock { open, range } => c.submit_lock(open, &[range], true),
            Step::Unlock { open, range } => c.submit_unlock(open, &[range]),
            Step::Open { file } => c.submit(open_request(file)),
            // Only sent for an open that succeeded (`Outcome::needs_undo`).
            Step::Close => c.submit(Request::Close {
                open: match outcome {
                    Outcome::Opened(open) => open,
                    _ => OpenId(0),
                },
            }),
        }
    }
}

/// What a reply said, as much as the load needs (no `Reply` is kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Waiting,
    Success,
    Opened(OpenId),
    Refused,
}

impl Outcome {
    fn of(reply: &Reply) -> Outcome {
        match reply {
            Reply::Done(lockmgr_engine::Status::Success) => Outcome::Success,
            Reply::Opened { open, .. } => Outcome::Opened(*open),
            _ => Outcome::Refused,
        }
    }

    /// Whether the operation took effect and must be undone (`undo` is its undo step).
    fn needs_undo(self, undo: &Step) -> bool {
        matches!(
            (self, undo),
            (Outcome::Opened(_), Step::Close) | (Outcome::Success, Step::Unlock { .. })
        )
    }
}

/// Produces the client's next operations. Locks are always followed by their unlock (and opens
/// by their close) so the tables do not grow during the run.
struct OpGen {
    spec: LoadSpec,
    zipf: Zipf,
    rng: rand::rngs::StdRng,
    /// Ranges are spread per client so uncontended clients never overlap.
    range_base: u64,
    counter: u64,
}

impl OpGen {
    fn new(spec: &LoadSpec) -> OpGen {
        OpGen {
            spec: spec.clone(),
            zipf: Zipf::new(ZIPF_FILES),
            rng: rand::rngs::StdRng::seed_from_u64(spec.seed),
            range_base: spec.client_index as u64 * (1 << 30),
            counter: 0,
        }
    }

    fn pick(&mut self, ws: &Workset) -> (FileId, OpenId) {
        match self.spec.pattern {
            Pattern::Zipf => ws.files[self.zipf.sample(&mut self.rng)],
            _ => ws.files[0],
        }
    }

    /// A batch of `n` "do" operations followed by their `n` "undo" operations.
    fn batch(&mut self, ws: &Workset, n: usize, out: &mut Vec<Step>, undo: &mut Vec<Step>) {
        out.clear();
        undo.clear();
        for _ in 0..n {
            let (file, open) = self.pick(ws);
            let slot = self.counter;
            self.counter += 1;
            let offset = match self.spec.pattern {
                Pattern::Hot => 0,
                _ => self.range_base + (slot % 4096) * 64,
            };
            let range = LockRange {
                offset,
                length: 64,
                exclusive: true,
            };
            let op = match self.spec.op {
                Op::Mixed => [Op::Lock, Op::Open][(slot % 2) as usize],
                other => other,
            };
            match op {
                Op::Lock | Op::Mixed => {
                    out.push(Step::Lock { open, range });
                    undo.push(Step::Unlock { open, range });
                }
                Op::Open => {
                    out.push(Step::Open { file });
                    undo.push(Step::Close);
                }
            }
        }
    }
}

/// One batch in flight in closed-loop mode.
struct InFlight {
    /// Request id of the batch's first request; the others follow without gaps.
    first: u64,
    outcomes: Vec<Outcome>,
    got: usize,
    sent_at: Instant,
    /// For a batch of operations: what undoes each (unlock, close); empty for an undo batch.
    undo: Vec<Step>,
}

/// Closed loop: keeps `spec.depth` batches in flight. When a batch of operations is answered,
/// the undo batch for what was granted (unlock, close) is sent; every request's latency is its
/// batch's round trip (recorded once per batch with the batch's count, so recording costs
/// nothing per request).
pub fn run_closed<T: ClientTransport>(
    c: &mut LockClient<T>,
    ws: &Workset,
    spec: &LoadSpec,
) -> Result<LoadResult, String> {
    let mut gen = OpGen::new(spec);
    let mut hist = new_histogram();
    let depth = spec.depth.max(1);
    let mut steps = Vec::with_capacity(spec.batch);
    let mut in_flight: Vec<InFlight> = Vec::with_capacity(2 * depth);
    // Outcome vectors and undo lists of finished batches, reused.
    let mut outcome_pool: Vec<Vec<Outcome>> = Vec::new();
    let mut undo_pool: Vec<Vec<Step>> = Vec::new();
    let start = Instant::now();
    let mut ops = 0u64;
    let mut conflicts = 0u64;
    let mut last_progress = Instant::now();
    loop {
        let running = start.elapsed() < spec.duration;
        if !running && in_flight.is_empty() {
            break;
        }
        // Top up: new batches only while the run lasts; undo batches are sent regardless.
        let mut sent = false;
        // Undo batches count too, so depth 1 is strictly send, wait, undo, wait.
        while running && in_flight.len() < depth {
            let mut undo = undo_pool.pop().unwrap_or_default();
            gen.batch(ws, spec.batch, &mut steps, &mut undo);
            let sent_at = Instant::now();
            let mut first = None;
            for s in &steps {
                let id = s.submit(c, Outcome::Waiting).map_err(|e| e.to_string())?;
                first.get_or_insert(id.0);
            }
            let Some(first) = first else {
                break;
            };
            let mut outcomes = outcome_pool.pop().unwrap_or_default();
            outcomes.clear();
            outcomes.resize(undo.len(), Outcome::Waiting);
            in_flight.push(InFlight {
                first,
                outcomes,
                got: 0,
                sent_at,
                undo,
            });
            sent = true;
        }
        if sent {
            c.flush().map_err(|e| e.to_string())?;
        }
        let got = c
            .poll(&mut |ev| {
                let Event::Reply { request: id, reply } = ev else {
                    return;
                };
                // Few batches are in flight: a linear search is cheapest.
                if let Some(b) = in_flight
                    .iter_mut()
                    .find(|b| id.0 >= b.first && id.0 < b.first + b.outcomes.len() as u64)
                {
                    let slot = &mut b.outcomes[(id.0 - b.first) as usize];
                    if *slot == Outcome::Waiting {
                        b.got += 1;
                    }
                    *slot = Outcome::of(&reply);
                }
            })
            .map_err(|e: ClientError| e.to_string())?;
        // Retire answered batches; an answered operation batch begets its undo batch.
        let mut i = 0;
        let mut sent_undo = false;
        while i < in_flight.len() {
            if in_flight[i].got < in_flight[i].outcomes.len() {
                i += 1;
                continue;
            }
            let mut b = in_flight.swap_remove(i);
            let n = b.outcomes.len() as u64;
            let rtt = (b.sent_at.elapsed().as_nanos() as u64).clamp(1, hist.high());
            hist.saturating_record_n(rtt, n);
            ops += n;
            if !b.undo.is_empty() {
                let sent_at = Instant::now();
                let mut first = None;
                let mut count = 0;
                for (&outcome, u) in b.outcomes.iter().zip(&b.undo) {
                    if !outcome.needs_undo(u) {
                        conflicts += 1;
                        continue;
                    }
                    let id = u.submit(c, outcome).map_err(|e| e.to_string())?;
                    first.get_or_insert(id.0);
                    count += 1;
                }
                b.undo.clear();
                if let Some(first) = first {
                    let mut outcomes = outcome_pool.pop().unwrap_or_default();
                    outcomes.clear();
                    outcomes.resize(count, Outcome::Waiting);
                    in_flight.push(InFlight {
                        first,
                        outcomes,
                        got: 0,
                        sent_at,
                        undo: Vec::new(),
                    });
                    sent_undo = true;
                }
            }
            outcome_pool.push(b.outcomes);
            // Undo batches have no undo list: pooling their empty vectors would bury the
            // allocated ones and make every batch allocate afresh.
            if b.undo.capacity() > 0 {
                undo_pool.push(b.undo);
            }
        }
        if sent_undo {
            c.flush().map_err(|e| e.to_string())?;
        }
        if got > 0 {
            last_progress = Instant::now();
        } else if !sent && !sent_undo {
            if last_progress.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "timed out waiting for replies ({} batches in flight)",
                    in_flight.len()
                ));
            }
            c.wait(Some(Duration::from_millis(1)))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(LoadResult {
        hist,
        ops,
        conflicts,
        elapsed: start.elapsed(),
    })
}

/// Open loop: lock requests are due at fixed intervals whether or not earlier ones were
/// answered; each latency is measured from the time the request was due. A granted lock is
/// unlocked as soon as its reply arrives (the unlock is not measured).
pub fn run_open<T: ClientTransport>(
    c: &mut LockClient<T>,
    ws: &Workset,
    spec: &LoadSpec,
    rate: f64,
) -> Result<LoadResult, String> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut gen = OpGen::new(spec);
    let mut hist = new_histogram();
    let mut steps = Vec::with_capacity(1);
    let mut undo = Vec::with_capacity(1);
    // request id -> (due time, undo step)
    let mut in_flight: std::collections::HashMap<RequestId, (Instant, Step)> =
        std::collections::HashMap::new();
    let start = Instant::now();
    let mut next_due = start;
    let mut ops = 0u64;
    let mut conflicts = 0u64;
    let mut unlocks_pending = 0usize;
    let mut done: Vec<(RequestId, Outcome)> = Vec::new();
    while start.elapsed() < spec.duration || !in_flight.is_empty() || unlocks_pending > 0 {
        let now = Instant::now();
        if now - start > spec.duration + Duration::from_secs(10) {
            return Err("open-loop run did not drain".into());
        }
        let mut submitted = false;
        while next_due <= now && start.elapsed() < spec.duration {
            gen.batch(ws, 1, &mut steps, &mut undo);
            let (Some(s), Some(u)) = (steps.pop(), undo.pop()) else {
                break;
            };
            let id = s.submit(c, Outcome::Waiting).map_err(|e| e.to_string())?;
            in_flight.insert(id, (next_due, u));
            next_due += interval;
            submitted = true;
        }
        if submitted {
            c.flush().map_err(|e| e.to_string())?;
        }
        done.clear();
        c.poll(&mut |ev| {
            if let Event::Reply { request, reply } = ev {
                done.push((request, Outcome::of(&reply)));
            } else if let Event::Notify(Notification::Completed { .. }) = ev {
                // Not produced by this load (fail_immediately), ignored.
            }
        })
        .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let mut undo_sent = false;
        for &(id, outcome) in &done {
            if let Some((due, u)) = in_flight.remove(&id) {
                record(&mut hist, (t - due).as_nanos() as u64);
                ops += 1;
                if outcome.needs_undo(&u) {
                    u.submit(c, outcome).map_err(|e| e.to_string())?;
                    unlocks_pending += 1;
                    undo_sent = true;
                } else {
                    conflicts += 1;
                }
            } else {
                unlocks_pending = unlocks_pending.saturating_sub(1);
            }
        }
        if undo_sent {
            c.flush().map_err(|e| e.to_string())?;
        }
    }
    Ok(LoadResult {
        hist,
        ops,
        conflicts,
        elapsed: start.elapsed(),
    })
}

/// Bytes of one frame carrying one single-range lock request: the message size of the raw
/// baselines, so they move what the lock path moves.
pub fn lock_frame_len() -> usize {
    let mut buf = Vec::new();
    let mut w = lockmgr_proto::FrameWriter::new(&mut buf, lockmgr_engine::SessionId(1));
    let msg = lockmgr_proto::Message::Request {
        request_id: RequestId(1),
        body: Request::Lock {
            open: OpenId(1),
            ranges: vec![LockRange {
                offset: 0,
                length: 64,
                exclusive: true,
            }],
            fail_immediately: true,
        },
    };
    // Encoding a fixed message into an empty frame cannot fail.
    let _ = w.push(&msg);
    w.finish()
}
