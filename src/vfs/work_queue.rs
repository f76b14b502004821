//! A bounded queue of prefetch work that a few threads wait on without spinning.
//!
//! A tree walker's reads send about one request per file. A channel that spins and then
//! yields before its receivers sleep (crossbeam's) spent more CPU in those idle receivers
//! than the mount spent answering the requests; here a receiver sleeps on a condition
//! variable at once, and a sender wakes one receiver only when one sleeps.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

/// Items waiting, and whether the queue is closed.
struct Queue<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Receivers asleep in `pop`.
    sleeping: usize,
}

/// Work for a pool of threads: `try_push` never blocks, `pop` sleeps until there is some.
pub(super) struct WorkQueue<T> {
    queue: Mutex<Queue<T>>,
    ready: Condvar,
    capacity: usize,
}

impl<T> WorkQueue<T> {
    /// A queue that holds `capacity` items at most.
    pub(super) fn new(capacity: usize) -> Self {
        WorkQueue {
            queue: Mutex::new(Queue {
                items: VecDeque::with_capacity(capacity),
                closed: false,
                sleeping: 0,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }

    /// Queues `item`; false (the item dropped) when the queue is full or closed.
    pub(super) fn try_push(&self, item: T) -> bool {
        let mut queue = self.queue.lock().expect("not poisoned");
        if queue.closed || queue.items.len() >= self.capacity {
            return false;
        }
        queue.items.push_back(item);
        let wake = queue.sleeping > 0;
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// The oldest item, waiting for one; `None` once the queue is closed.
    pub(super) fn pop(&self) -> Option<T> {
        let mut queue = self.queue.lock().expect("not poisoned");
        loop {
            if queue.closed {
                return None;
            }
            if let Some(item) = queue.items.pop_front() {
                return Some(item);
            }
            queue.sleeping += 1;
            queue = self.ready.wait(queue).expect("not poisoned");
            queue.sleeping -= 1;
        }
    }

    /// Drops what is queued and ends every `pop`, now and later.
    pub(super) fn close(&self) {
        let mut queue = self.queue.lock().expect("not poisoned");
        queue.closed = true;
        queue.items.clear();
        drop(queue);
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn items_come_out_in_order_up_to_the_capacity_and_close_ends_the_receivers() {
        let queue = Arc::new(WorkQueue::new(3));
        for i in 0..4 {
            assert_eq!(queue.try_push(i), i < 3, "push {i}");
        }
        assert_eq!((queue.pop(), queue.pop()), (Some(0), Some(1)));
        let receivers: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || std::iter::from_fn(|| queue.pop()).collect::<Vec<_>>())
            })
            .collect();
        // Items pushed while receivers sleep reach them.
        for i in 10..20 {
            while !queue.try_push(i) {
                std::thread::yield_now();
            }
        }
        while !queue.queue.lock().unwrap().items.is_empty() {
            std::thread::yield_now();
        }
        queue.close();
        let mut got: Vec<i32> = receivers
            .into_iter()
            .flat_map(|r| r.join().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, [2].into_iter().chain(10..20).collect::<Vec<_>>());
        assert!(!queue.try_push(30), "a closed queue takes nothing");
    }
}
