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
    /// Started with the first block.
    worker: Option<Worker>,
    /// The encoder used inline, when no thread could be started (or the worker stopped).
    inline: Option<Box<Frame>>,
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
            spare: Vec::new(),
        }
    }

    /// An empty buffer for the next block, with room for `capacity` bytes.
    pub(super) fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// The worker thread, or `None` (then blocks are framed inline) when none can be started.
    fn start(marker: [u8; 16]) -> Option<Worker> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, done) = mpsc::channel::<Done>();
        let mut frame = Frame::new(marker);
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
            Ok(_) => Some(Worker {
                jobs,
                done,
                in_flight: 0,
            }),
            Err(error) => {
                tracing::debug!(%error, "compressing Avro blocks inline: no thread");
                None
            }
        }
    }

    /// Hands over a block of `rows` rows. With the worker, returns the oldest framed block once
    /// another is in flight (waiting for it), so one block at a time is compressed while the
    /// next one is encoded; inline, returns this block framed.
    pub(super) fn submit(&mut self, block: Vec<u8>, rows: u64) -> Option<Vec<u8>> {
        if self.worker.is_none() && self.inline.is_none() {
            self.worker = Self::start(self.marker);
        }
        let Some(worker) = &mut self.worker else {
            return Some(self.frame_inline(block, rows));
        };
        match worker.jobs.send(Job { block, rows }) {
            Ok(()) => {
                worker.in_flight += 1;
                (worker.in_flight > 1).then(|| self.receive()).flatten()
            }
            Err(mpsc::SendError(job)) => {
                // The worker is gone (it cannot panic short of running out of memory): the
                // blocks it held are lost, and the file's load fails its row count check.
                tracing::error!(
                    lost = worker.in_flight,
                    "the Avro block thread stopped; compressing inline from here"
                );
                self.worker = None;
                Some(self.frame_inline(job.block, job.rows))
            }
        }
    }

    fn frame_inline(&mut self, mut block: Vec<u8>, rows: u64) -> Vec<u8> {
        let marker = self.marker;
        let frame = self
            .inline
            .get_or_insert_with(|| Box::new(Frame::new(marker)));
        let framed = frame.frame(&block, rows);
        block.clear();
        self.spare.push(block);
        framed
    }

    /// The oldest block in flight, waited for; `None` when none is.
    fn receive(&mut self) -> Option<Vec<u8>> {
        let worker = self.worker.as_mut().filter(|worker| worker.in_flight > 0)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker and the inline fallback frame a block alike, and the worker keeps one block
    /// in flight: the first comes back with the second.
    #[test]
    fn blocks_are_framed_alike_on_the_worker_and_inline() {
        let marker = [7u8; 16];
        let (one, two) = (b"first rows ".repeat(500), b"second rows ".repeat(700));
        let mut threaded = Blocks::new(marker);
        assert_eq!(threaded.submit(one.clone(), 3), None, "in flight");
        let first = threaded.submit(two.clone(), 4).expect("the first block");
        let second = threaded.drain();
        assert_eq!(threaded.drain(), Vec::<u8>::new());

        let mut inline = Blocks::new(marker);
        inline.inline = Some(Box::new(Frame::new(marker)));
        assert_eq!(inline.submit(one, 3), Some(first));
        assert_eq!(inline.submit(two, 4), Some(second));
        assert!(inline.worker.is_none());
    }
}
