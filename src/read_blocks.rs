//! The blocks a stream is read into to be cut into chunks. A block is page-aligned (as reads
//! around the page cache need, `fs::uncached`) and keeps room before the bytes read into it
//! for the unfinished chunk the block before ended with, so a chunk always lies whole in one
//! block. A chunk is a range of its block, not a copy: the chunk pool's threads store it
//! straight from there, and the block is used again once no chunk holds it.

use crate::fs::uncached::{AlignedBytes, DIRECT_IO_ALIGN, advise_huge_pages};
use crossbeam_channel::{Receiver, Sender, bounded};
use std::io::Read;
use std::ops::{Deref, Range};
use std::sync::Arc;

/// How many blocks that came back a reader keeps for its next ones: one read ahead, one
/// being cut and those the chunk pool still stores chunks from; any more are freed.
const KEPT_BLOCKS: usize = 4;

/// A page-aligned buffer a stream was read into.
pub(crate) struct Block {
    bytes: AlignedBytes,
    /// Where the bytes go once nothing holds the block (none for bytes held in memory).
    returns: Option<Sender<AlignedBytes>>,
}

impl Block {
    pub(crate) fn area(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn area_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(returns) = &self.returns {
            // Freed when the reader keeps enough blocks already, or is gone.
            let _ = returns.try_send(std::mem::take(&mut self.bytes));
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
        assert!(
            range.end <= block.area().len(),
            "a chunk lies inside its block"
        );
        Chunk { block, range }
    }

    /// A copy of `bytes`, as one chunk held in memory.
    pub fn in_memory(bytes: &[u8]) -> Self {
        let mut copy = AlignedBytes::default();
        copy.extend_from_slice(bytes);
        let block = Block {
            bytes: copy,
            returns: None,
        };
        Chunk::new(Arc::new(block), 0..bytes.len())
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
/// nothing holds any more comes back here (up to `KEPT_BLOCKS` of them).
pub struct ReadBlocks {
    returns: Sender<AlignedBytes>,
    returned: Receiver<AlignedBytes>,
}

impl Default for ReadBlocks {
    fn default() -> Self {
        let (returns, returned) = bounded(KEPT_BLOCKS);
        ReadBlocks { returns, returned }
    }
}

impl ReadBlocks {
    /// A block of `carry` bytes for the unfinished chunk of the block before, then `read`
    /// bytes to read into (both multiples of the page size): one that came back, or a new
    /// one. Blocks that came back in another size are freed on the way.
    pub(crate) fn take(&self, carry: usize, read: usize) -> Block {
        debug_assert!(carry.is_multiple_of(DIRECT_IO_ALIGN));
        debug_assert!(read.is_multiple_of(DIRECT_IO_ALIGN));
        let bytes = std::iter::from_fn(|| self.returned.try_recv().ok())
            .find(|bytes| bytes.len() == carry + read)
            .unwrap_or_else(|| new_block_bytes(carry, read));
        Block {
            bytes,
            returns: Some(self.returns.clone()),
        }
    }
}

/// Zeroed bytes for a block, the part read into in huge pages where the kernel can: the
/// kernel pins each page of a read around the cache, and the cutter and the chunk pool read
/// them after (with 4 KiB pages one large file took 4% longer to back up). The part for an
/// unfinished chunk keeps small pages: only as much of it as such chunks fill is resident.
fn new_block_bytes(carry: usize, read: usize) -> AlignedBytes {
    let bytes = AlignedBytes::zeroed(carry + read);
    // SAFETY: the part read into lies in the bytes' storage.
    unsafe { advise_huge_pages(bytes[carry..].as_ptr(), read) };
    bytes
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
        let mut block = blocks.take(DIRECT_IO_ALIGN, DIRECT_IO_ALIGN);
        assert!(block.area().as_ptr().addr().is_multiple_of(DIRECT_IO_ALIGN));
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
                .take(DIRECT_IO_ALIGN, DIRECT_IO_ALIGN)
                .area()
                .as_ptr(),
            first
        );
    }

    #[test]
    fn a_reader_keeps_a_few_blocks_that_came_back_and_frees_the_rest() {
        let blocks = ReadBlocks::default();
        let taken: Vec<Block> = (0..KEPT_BLOCKS + 3)
            .map(|_| blocks.take(DIRECT_IO_ALIGN, DIRECT_IO_ALIGN))
            .collect();
        drop(taken);
        assert_eq!(blocks.returned.len(), KEPT_BLOCKS);
    }
}
