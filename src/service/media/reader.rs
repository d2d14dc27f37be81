//! Stored files streamed to responses in large blocks, the next block read
//! on a blocking thread while the current one is sent. actix-files reads
//! 64 KiB at a time and only after the previous chunk has gone out; the
//! hand-offs between threads, not the disk, then set a download's pace.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::task::JoinHandle;

use super::blocks::{BlockPool, BLOCK};

/// Bytes read per block: at most two blocks per download are in memory.
const READ_BLOCK: u64 = BLOCK as u64;

/// `len` bytes of `file` from `start`, as a stream of blocks.
pub struct FileStream {
    file: Arc<File>,
    /// Where the next block to read starts, and where the range ends.
    next: u64,
    end: u64,
    in_flight: Option<JoinHandle<io::Result<Bytes>>>,
    blocks: Arc<BlockPool>,
}

impl FileStream {
    pub(super) fn new(file: File, start: u64, len: u64, blocks: Arc<BlockPool>) -> Self {
        Self {
            file: Arc::new(file),
            next: start,
            end: start.saturating_add(len),
            in_flight: None,
            blocks,
        }
    }

    /// Starts reading the next block, if any is left.
    fn read_ahead(&mut self) {
        if self.next >= self.end {
            return;
        }
        let offset = self.next;
        let len = (self.end - offset).min(READ_BLOCK) as usize;
        self.next += len as u64;
        let file = Arc::clone(&self.file);
        let blocks = Arc::clone(&self.blocks);
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut block = PooledBlock {
                bytes: blocks.take(),
                blocks,
            };
            block.bytes.resize(len, 0);
            file.read_exact_at(&mut block.bytes, offset)?;
            // Goes back to the pool once actix has sent it.
            Ok(Bytes::from_owner(block))
        }));
    }
}

/// A block read from a file, returned to its pool when dropped.
struct PooledBlock {
    bytes: Vec<u8>,
    blocks: Arc<BlockPool>,
}

impl AsRef<[u8]> for PooledBlock {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PooledBlock {
    fn drop(&mut self) {
        self.blocks.give(std::mem::take(&mut self.bytes));
    }
}

impl Stream for FileStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.in_flight.is_none() {
            self.read_ahead();
        }
        let Some(read) = self.in_flight.as_mut() else {
            return Poll::Ready(None);
        };
        let result = ready!(Pin::new(read).poll(cx));
        self.in_flight = None;
        match result {
            Ok(Ok(block)) => {
                self.read_ahead();
                Poll::Ready(Some(Ok(block)))
            }
            Ok(Err(e)) => {
                self.next = self.end;
                Poll::Ready(Some(Err(e)))
            }
            Err(_) => {
                self.next = self.end;
                Poll::Ready(Some(Err(io::Error::other("reading a media file was cancelled"))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Write;

    #[tokio::test]
    async fn streams_exactly_the_range_in_blocks() {
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..(READ_BLOCK * 2 + 1000)).map(|i| (i % 251) as u8).collect();
        file.write_all(&content).unwrap();
        for (start, len) in [
            (0, content.len() as u64),
            (10, READ_BLOCK),
            (READ_BLOCK - 1, 1002),
            (5, 0),
        ] {
            let stream = FileStream::new(file.try_clone().unwrap(), start, len, Arc::default());
            let blocks: Vec<Bytes> = stream.map(|b| b.unwrap()).collect().await;
            assert!(blocks.iter().all(|b| b.len() as u64 <= READ_BLOCK));
            let got: Vec<u8> = blocks.concat();
            assert_eq!(got, &content[start as usize..(start + len) as usize], "{start}+{len}");
        }
    }

    #[tokio::test]
    async fn a_file_shorter_than_the_range_ends_in_an_error() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7; 100]).unwrap();
        let mut stream = FileStream::new(file, 0, 200, Arc::default());
        assert!(stream.next().await.unwrap().is_err());
        assert!(stream.next().await.is_none());
    }
}
