//! Block buffers for streaming media, kept between uploads and downloads.
//!
//! Each block is reserved at the mmap threshold that `main.rs` fixes, so
//! glibc maps it on its own and unmaps it when it is freed: carved from the
//! heap instead, the buffers of a few concurrent transfers left megabytes of
//! fragments behind in the allocator's arenas. A freshly mapped block costs
//! a page fault and a cleared page for every 4 KiB touched, and an unmap
//! when freed: several percent of an upload's CPU. So a few blocks are
//! kept for the next transfer.

use std::sync::Mutex;

/// Bytes of a block that are ever used.
pub const BLOCK: usize = 256 * 1024;
/// What each block reserves; only its first [`BLOCK`] bytes are touched.
const RESERVATION: usize = 1 << 20;
/// Blocks kept when idle: two per transfer for four at once, at most 2 MiB
/// of memory. Blocks freed past this are unmapped.
const KEPT: usize = 8;

#[derive(Default)]
pub struct BlockPool {
    spare: Mutex<Vec<Vec<u8>>>,
}

impl BlockPool {
    /// An empty block with room for [`BLOCK`] bytes.
    pub fn take(&self) -> Vec<u8> {
        let kept = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        kept.unwrap_or_else(|| Vec::with_capacity(RESERVATION))
    }

    /// Keeps `block` for later, or frees it when enough are kept.
    pub fn give(&self, mut block: Vec<u8>) {
        // Only the pool's own blocks come back: anything else (an empty
        // `Vec` left by `mem::take`) is not worth keeping.
        if block.capacity() != RESERVATION {
            return;
        }
        block.clear();
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < KEPT {
            spare.push(block);
        }
    }

    /// How many blocks are kept.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.spare.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reused_up_to_the_limit() {
        let pool = BlockPool::default();
        let blocks: Vec<_> = (0..KEPT + 2).map(|_| pool.take()).collect();
        let addresses: Vec<_> = blocks.iter().map(|b| b.as_ptr()).collect();
        for mut block in blocks {
            block.extend_from_slice(b"used");
            pool.give(block);
        }
        assert_eq!(pool.kept(), KEPT, "blocks past the limit are freed");
        let again = pool.take();
        assert!(again.is_empty(), "a kept block comes back empty");
        assert_eq!(again.as_ptr(), addresses[KEPT - 1], "the last block kept is reused");
        pool.give(Vec::new());
        assert_eq!(pool.kept(), KEPT - 1, "foreign buffers are not kept");
    }
}
