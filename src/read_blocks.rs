//! The blocks a stream is read into to be cut into chunks. A block is page-aligned (as reads
//! around the page cache need, `fs::uncached`) and keeps room before the bytes read into it
//! for the unfinished chunk the block before ended with, so a chunk always lies whole in one
//! block. A chunk is a range of its block, not a copy: the chunk pool's threads store it
//! straight from there, and the block is used again once no chunk holds it.

use crate::fs::uncached::{DIRECT_READ_ALIGN, advise_huge_pages};
use crossbeam_channel::{Receiver, Sender, unbounded};
use std::io::Read;
use std::ops::{Deref, Range};
use std::sync::Arc;

/// A page-aligned buffer a stream was read into.
pub(crate) struct Block {
    storage: Vec<u8>,
    /// Where the aligned area starts in `storage`.
    base: usize,
    /// The aligned area's length.
    len: usize,
    /// Where `storage` goes once nothing holds the block (none for bytes held in memory).
    returns: Option<Sender<Vec<u8>>>,
}

impl Block {
    pub(crate) fn area(&self) -> &[u8] {
        &self.storage[self.base..self.base + self.len]
    }

    pub(crate) fn area_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.base..self.base + self.len]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(returns) = &self.returns {
            // The blocks' owner may be gone; then the buffer is freed.
            let _ = returns.send(std::mem::take(&mut self.storage));
        }
    }
}

/// One chunk of a stream: a range of the block it was read into.
#[derive(Clone)]
pub struct Chunk {
    block: Arc<Block>,
    range: Range<usize>,
}

impl Chunk {
    pub(crate) fn new(block: Arc<Block>, range: Range<usize>) -> Self {
        assert!(range.end <= block.len, "a chunk lies inside its block");
        Chunk { block, range }
    }

    /// All of `bytes`, as one chunk held in memory.
    pub fn in_memory(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        let block = Block {
            storage: bytes,
            base: 0,
            len,
            returns: None,
        };
        Chunk::new(Arc::new(block), 0..len)
    }

    /// The part `range` of this chunk, sharing its bytes.
    pub fn part(&self, range: Range<usize>) -> Self {
        assert!(range.start <= range.end && range.end <= self.len());
        let start = self.range.start;
        Chunk::new(self.block.clone(), start + range.start..start + range.end)
    }
}

impl Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.block.area()[self.range.clone()]
    }
}

/// The blocks one reader of streams reads into, kept from stream to stream: a block that
/// nothing holds any more comes back here.
pub struct ReadBlocks {
    returns: Sender<Vec<u8>>,
    returned: Receiver<Vec<u8>>,
}

impl Default for ReadBlocks {
    fn default() -> Self {
        let (returns, returned) = unbounded();
        ReadBlocks { returns, returned }
    }
}

impl ReadBlocks {
    /// A block of `carry` bytes for the unfinished chunk of the block before, then `read`
    /// bytes to read into (both multiples of the page size): one that came back, or a new
    /// one.
    pub(crate) fn take(&self, carry: usize, read: usize) -> Block {
        debug_assert!(carry.is_multiple_of(DIRECT_READ_ALIGN));
        debug_assert!(read.is_multiple_of(DIRECT_READ_ALIGN));
        let len = carry + read;
        let storage = std::iter::from_fn(|| self.returned.try_recv().ok())
            .find(|storage| storage.len() == len + DIRECT_READ_ALIGN)
            .unwrap_or_else(|| new_storage(carry, read));
        let base = storage.as_ptr().align_offset(DIRECT_READ_ALIGN);
        Block {
            storage,
            base,
            len,
            returns: Some(self.returns.clone()),
        }
    }
}

/// Zeroed storage for a block, the part read into in huge pages where the kernel can: the
/// kernel pins each page of a read around the cache, and the cutter and the chunk pool read
/// them after (with 4 KiB pages one large file took 4% longer to back up). The part for an
/// unfinished chunk keeps small pages: only as much of it as such chunks fill is resident.
fn new_storage(carry: usize, read: usize) -> Vec<u8> {
    let storage = vec![0u8; carry + read + DIRECT_READ_ALIGN];
    let base = storage.as_ptr().align_offset(DIRECT_READ_ALIGN);
    // SAFETY: the part read into lies in the vector's storage.
    unsafe { advise_huge_pages(storage[base + carry..].as_ptr(), read) };
    storage
}

/// Reads from `reader` until `area` is full or the stream ends; returns the bytes read and
/// whether the stream ended. Every read but a short last one starts and ends on a page
/// boundary when `area` does and the reader reads whole pages.
pub(crate) fn fill(reader: &mut impl Read, area: &mut [u8]) -> std::io::Result<(usize, bool)> {
    let mut filled = 0;
    while filled < area.len() {
        match reader.read(&mut area[filled..]) {
            Ok(0) => return Ok((filled, true)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((filled, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_comes_back_once_no_chunk_holds_it_and_is_taken_again() {
        let blocks = ReadBlocks::default();
        let mut block = blocks.take(DIRECT_READ_ALIGN, DIRECT_READ_ALIGN);
        assert!(
            block
                .area()
                .as_ptr()
                .addr()
                .is_multiple_of(DIRECT_READ_ALIGN)
        );
        block.area_mut()[..3].copy_from_slice(b"abc");
        let first = block.area().as_ptr();
        let block = Arc::new(block);
        let chunk = Chunk::new(block.clone(), 1..3);
        drop(block);
        assert_eq!(&*chunk, b"bc");
        assert_eq!(&*chunk.part(1..2), b"c");
        assert!(blocks.returned.is_empty(), "a chunk still holds the block");
        drop(chunk);
        assert_eq!(blocks.returned.len(), 1);
        assert_eq!(
            blocks
                .take(DIRECT_READ_ALIGN, DIRECT_READ_ALIGN)
                .area()
                .as_ptr(),
            first
        );
    }
}
