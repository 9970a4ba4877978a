//! The Avro writer's blocks, compressed on a thread of their own while the next block is
//! encoded: Snappy was an eighth of a single-threaded extraction's time, and the thread that
//! reads and encodes rows is the one that sets the pace. One block is in flight at a time, so
//! memory stays at a few blocks, and blocks come back in the order they were handed over.
//!
//! The `snappy` codec of an Avro container file: each block is Snappy's raw format followed by
//! the CRC-32 of the uncompressed data, big-endian; a block on the wire is its row count, its
//! size (varints), its data and the file's sync marker (Avro specification, "Object Container
//! Files" and "Required Codecs"). Written here with the `snap` and `crc32fast` crates rather
//! than `apache_avro::Codec::compress`, which allocates and zeroes a new buffer per block.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::thread;

/// A block to compress: its encoded rows and how many.
struct Job {
    block: Vec<u8>,
    rows: u64,
}

/// A compressed block framed for the file, and the emptied buffer of its rows.
struct Done {
    framed: Vec<u8>,
    block: Vec<u8>,
}

/// Compresses and frames blocks, on a worker thread when one could be started.
pub(super) struct Blocks {
    marker: [u8; 16],
    worker: Option<Worker>,
    /// Without a worker: the encoder, used inline.
    inline: Option<Box<Frame>>,
    /// Framed blocks not yet taken, in order (inline mode).
    ready: VecDeque<Vec<u8>>,
    /// Emptied buffers to encode the next blocks into.
    spare: Vec<Vec<u8>>,
}

struct Worker {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Done>,
    in_flight: usize,
}

/// Snappy's encoder and its output buffer, reused from block to block.
struct Frame {
    snappy: snap::raw::Encoder,
    compressed: Vec<u8>,
    marker: [u8; 16],
}

impl Frame {
    fn new(marker: [u8; 16]) -> Self {
        Self {
            snappy: snap::raw::Encoder::new(),
            compressed: Vec::new(),
            marker,
        }
    }

    /// `block` (of `rows` rows) compressed and framed.
    fn frame(&mut self, block: &[u8], rows: u64) -> Vec<u8> {
        let max = snap::raw::max_compress_len(block.len());
        if self.compressed.len() < max {
            self.compressed.resize(max, 0);
        }
        // Snappy fails only on an input over 4 GiB or a short output; a block is one chunk
        // (about 1 MiB) plus one row, and the output is sized by `max_compress_len`. Should it
        // fail, the block is written with no data: the file does not decode and its load job
        // fails, so the table fails instead of loading short.
        let size = match self.snappy.compress(block, &mut self.compressed) {
            Ok(size) => size,
            Err(error) => {
                tracing::error!(%error, "snappy could not compress an Avro block");
                0
            }
        };
        let mut out = Vec::with_capacity(size + 4 + 20 + self.marker.len());
        super::put_long(&mut out, rows as i64);
        super::put_long(&mut out, size as i64 + 4);
        out.extend_from_slice(&self.compressed[..size]);
        out.extend_from_slice(&crc32fast::hash(block).to_be_bytes());
        out.extend_from_slice(&self.marker);
        out
    }
}

impl Blocks {
    pub(super) fn new(marker: [u8; 16]) -> Self {
        Self {
            marker,
            worker: None,
            inline: None,
            ready: VecDeque::new(),
            spare: Vec::new(),
        }
    }

    /// An empty buffer for the next block, with room for `capacity` bytes.
    pub(super) fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    fn start(&mut self) {
        if self.worker.is_some() || self.inline.is_some() {
            return;
        }
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, done) = mpsc::channel::<Done>();
        let mut frame = Frame::new(self.marker);
        let spawned = thread::Builder::new()
            .name("avro-blocks".into())
            .spawn(move || {
                for Job { mut block, rows } in inbox {
                    let framed = frame.frame(&block, rows);
                    block.clear();
                    if outbox.send(Done { framed, block }).is_err() {
                        break;
                    }
                }
            });
        match spawned {
            Ok(_) => {
                self.worker = Some(Worker {
                    jobs,
                    done,
                    in_flight: 0,
                });
            }
            Err(error) => {
                tracing::debug!(%error, "compressing Avro blocks inline: no thread");
                self.inline = Some(Box::new(Frame::new(self.marker)));
            }
        }
    }

    /// Hands over a block of `rows` rows. Returns the oldest framed block when another is
    /// still in flight (waiting for it), so one block at a time is compressed while the next
    /// one is encoded.
    pub(super) fn submit(&mut self, block: Vec<u8>, rows: u64) -> Option<Vec<u8>> {
        self.start();
        if let Some(worker) = &mut self.worker {
            match worker.jobs.send(Job { block, rows }) {
                Ok(()) => worker.in_flight += 1,
                Err(mpsc::SendError(job)) => {
                    // The worker is gone (it cannot panic short of running out of memory):
                    // carry on inline.
                    let framed = Frame::new(self.marker).frame(&job.block, job.rows);
                    self.ready.push_back(framed);
                }
            }
            if self
                .worker
                .as_ref()
                .is_some_and(|worker| worker.in_flight > 1)
            {
                return self.receive();
            }
            return self.ready.pop_front();
        }
        if let Some(frame) = &mut self.inline {
            let framed = frame.frame(&block, rows);
            let mut block = block;
            block.clear();
            self.spare.push(block);
            self.ready.push_back(framed);
        }
        self.ready.pop_front()
    }

    /// The oldest block in flight, waited for.
    fn receive(&mut self) -> Option<Vec<u8>> {
        if let Some(framed) = self.ready.pop_front() {
            return Some(framed);
        }
        let worker = self.worker.as_mut()?;
        if worker.in_flight == 0 {
            return None;
        }
        worker.in_flight -= 1;
        match worker.done.recv() {
            Ok(Done { framed, block }) => {
                self.spare.push(block);
                Some(framed)
            }
            Err(_) => {
                tracing::error!(
                    "the Avro block thread stopped: its block is lost, and the load of this file will not match its row count"
                );
                None
            }
        }
    }

    /// Every block still in flight, framed, in order.
    pub(super) fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(framed) = self.receive() {
            out.extend_from_slice(&framed);
        }
        out
    }
}
