//! Storing a stream's chunks on every core while the stream is still being cut. One pool of
//! threads serves every reader of a run: a reader hands it each chunk of a stream and gets
//! back, in the stream's order, what storing each gave. A stream's last chunk (a small file
//! has only that one) is stored by the reader itself, so small files never wait on the pool
//! and a large one keeps every core busy. A chunk goes to the pool as a range of the block it
//! was read into, not a copy; the pool's queue is bounded, so a run holds the blocks of the
//! chunks in flight, never a whole file.

use crate::error::Result;
use crate::read_blocks::Chunk;
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

/// How one chunk is stored: what the pool's threads and the readers both call.
pub(crate) type StoreChunk<'f, T> = dyn Fn(&[u8]) -> Result<T> + Sync + 'f;

/// What storing the stream's chunk at an index gave.
type Answer<T> = (usize, Result<T>);

/// One chunk on its way to the pool, and where its answer goes.
struct Task<T> {
    index: usize,
    chunk: Chunk,
    reply: Sender<Answer<T>>,
}

/// Threads storing chunks handed to them by `OrderedChunks`.
pub(crate) struct ChunkPool<'f, T> {
    tasks: Sender<Task<T>>,
    store: &'f StoreChunk<'f, T>,
}

/// Runs `body` with a pool of `threads` threads storing chunks with `store`; returns once
/// `body` has and every chunk handed to the pool is stored.
pub(crate) fn with_chunk_pool<T: Send, R>(
    threads: usize,
    store: &(dyn Fn(&[u8]) -> Result<T> + Sync),
    body: impl FnOnce(&ChunkPool<'_, T>) -> R,
) -> R {
    let threads = threads.max(1);
    let (tasks, queue) = bounded::<Task<T>>(2 * threads);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let queue: Receiver<Task<T>> = queue.clone();
            scope.spawn(move || {
                for task in queue {
                    // A reader that gave up on its stream no longer listens.
                    let _ = task.reply.send((task.index, store(&task.chunk)));
                }
            });
        }
        drop(queue);
        let pool = ChunkPool { tasks, store };
        body(&pool)
    })
}

impl<T> ChunkPool<'_, T> {
    /// A new stream of chunks to store in order.
    pub(crate) fn stream(&self) -> OrderedChunks<'_, T> {
        let (reply, answers) = unbounded();
        OrderedChunks {
            store: self.store,
            tasks: &self.tasks,
            reply: Some(reply),
            answers,
            results: Vec::new(),
            pending: 0,
        }
    }
}

/// One stream's chunks, stored on the pool and by the reader, their results kept in the
/// stream's order.
pub(crate) struct OrderedChunks<'p, T> {
    store: &'p StoreChunk<'p, T>,
    tasks: &'p Sender<Task<T>>,
    /// Where the pool answers: every task takes a copy (dropped before `finish` waits, so a
    /// thread that died with a task ends the wait instead of hanging it).
    reply: Option<Sender<Answer<T>>>,
    answers: Receiver<Answer<T>>,
    results: Vec<Option<T>>,
    pending: usize,
}

impl<T> OrderedChunks<'_, T> {
    /// Stores `chunk`, the stream's next: on this thread when it is the `last`, otherwise on
    /// the pool (waiting while the pool's queue is full). Fails with the first failure of a
    /// chunk stored so far.
    pub(crate) fn push(&mut self, chunk: &Chunk, last: bool) -> Result<()> {
        let index = self.results.len();
        self.results.push(None);
        if last {
            self.results[index] = Some((self.store)(chunk)?);
        } else {
            let task = Task {
                index,
                chunk: chunk.clone(),
                reply: self.reply.clone().expect("kept until finish"),
            };
            self.tasks
                .send(task)
                .expect("the pool outlives its streams");
            self.pending += 1;
        }
        while let Ok(answer) = self.answers.try_recv() {
            self.take(answer)?;
        }
        Ok(())
    }

    /// Whether no chunk was pushed yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Waits for every chunk and returns what storing each gave, in the stream's order.
    pub(crate) fn finish(mut self) -> Result<Vec<T>> {
        self.reply = None;
        while self.pending > 0 {
            let answer = self
                .answers
                .recv()
                .expect("the pool answers every chunk it takes");
            self.take(answer)?;
        }
        Ok(self
            .results
            .into_iter()
            .map(|result| result.expect("every chunk is answered"))
            .collect())
    }

    fn take(&mut self, (index, result): Answer<T>) -> Result<()> {
        self.pending -= 1;
        self.results[index] = Some(result?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::Mutex;
    use std::thread::ThreadId;

    #[test]
    fn results_come_back_in_the_streams_order_from_several_threads() {
        let threads_seen = Mutex::new(std::collections::HashSet::<ThreadId>::new());
        let store = |chunk: &[u8]| {
            // Later chunks finish first.
            std::thread::sleep(std::time::Duration::from_millis(u64::from(20 - chunk[0])));
            threads_seen
                .lock()
                .unwrap()
                .insert(std::thread::current().id());
            Ok(chunk[0])
        };
        let stored = with_chunk_pool(2, &store, |pool| {
            let mut stream = pool.stream();
            for i in 0..20u8 {
                stream.push(&Chunk::in_memory(&[i]), i == 19).unwrap();
            }
            stream.finish().unwrap()
        });
        assert_eq!(stored, (0..20).collect::<Vec<u8>>());
        assert!(threads_seen.lock().unwrap().len() >= 2);
    }

    #[test]
    fn the_last_chunk_is_stored_by_the_reader_and_a_failure_is_returned() {
        let reader = std::thread::current().id();
        let store = |chunk: &[u8]| match chunk {
            [7] => Err(Error::InvalidInput("chunk 7".into())),
            [last] if *last == 9 => {
                assert_eq!(std::thread::current().id(), reader);
                Ok(*last)
            }
            [other] => Ok(*other),
            _ => unreachable!(),
        };
        let failed = with_chunk_pool(2, &store, |pool| {
            let mut stream = pool.stream();
            (0..10u8)
                .try_for_each(|i| stream.push(&Chunk::in_memory(&[i]), i == 9))
                .and_then(|()| stream.finish())
        });
        assert!(failed.unwrap_err().to_string().contains("chunk 7"));
        let small = with_chunk_pool(2, &store, |pool| {
            let mut stream = pool.stream();
            stream.push(&Chunk::in_memory(&[9]), true).unwrap();
            stream.finish().unwrap()
        });
        assert_eq!(small, [9]);
    }
}
