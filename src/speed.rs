//! The floor a backup is measured against: how fast cairn's pipeline (chunk, hash, compress,
//! seal) runs on given bytes in memory, with no file or repository I/O. Files are loaded in
//! batches, untimed, so memory stays bounded; only the pipeline over each batch is timed.

use crate::chunk_pool::with_chunk_pool;
use crate::chunker::{Chunker, ChunkerParams};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::read_blocks::Chunk;
use crate::repo::codec::Codec;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bytes loaded into memory at a time.
const BATCH_BYTES: u64 = 256 << 20;

/// What one measurement found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineSpeed {
    pub files: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub threads: usize,
    /// Wall time of the pipeline alone, summed over the batches.
    pub seconds: f64,
}

impl PipelineSpeed {
    pub fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.seconds.max(1e-9)
    }
}

/// Runs the pipeline of an encrypted repository (default chunker, zstd `level`) over the
/// regular files below `paths` on `threads` threads.
pub fn measure(paths: &[PathBuf], threads: usize, level: i32) -> Result<PipelineSpeed> {
    let key = MasterKey::generate();
    let chunker = Chunker::new(ChunkerParams::default(), key.chunker_seed())?;
    let codec = Codec::new(Some(key), level);
    let threads = threads.max(1);
    let mut speed = PipelineSpeed {
        files: 0,
        bytes: 0,
        chunks: 0,
        threads,
        seconds: 0.0,
    };
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut elapsed = Duration::ZERO;
    let mut run_batch = |batch: &mut Vec<Chunk>, speed: &mut PipelineSpeed| {
        let started = Instant::now();
        speed.chunks += run_pipeline(batch, &chunker, &codec, threads);
        elapsed += started.elapsed();
        batch.clear();
    };
    for path in paths {
        for file in regular_files(path)? {
            let data = std::fs::read(&file)
                .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
            speed.files += 1;
            speed.bytes += data.len() as u64;
            batch_bytes += data.len() as u64;
            batch.push(Chunk::in_memory(&data));
            if batch_bytes >= BATCH_BYTES {
                run_batch(&mut batch, &mut speed);
                batch_bytes = 0;
            }
        }
    }
    run_batch(&mut batch, &mut speed);
    speed.seconds = elapsed.as_secs_f64();
    Ok(speed)
}

/// Chunks, hashes, compresses and seals every file of `batch` as a backup does: `threads`
/// readers each cut a file at a time, storing its last chunk themselves and handing the
/// others (ranges of the file's bytes, as a backup hands ranges of its read blocks) to a
/// pool of `threads` threads (`chunk_pool`). Returns the chunk count.
fn run_pipeline(batch: &[Chunk], chunker: &Chunker, codec: &Codec, threads: usize) -> u64 {
    let next = AtomicUsize::new(0);
    let seal = |chunk: &[u8]| {
        std::hint::black_box(codec.id_of(chunk));
        std::hint::black_box(codec.encode(chunk, true));
        Ok(())
    };
    with_chunk_pool(threads, &seal, |pool| {
        std::thread::scope(|scope| {
            let readers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut chunks = 0u64;
                        while let Some(data) = batch.get(next.fetch_add(1, Ordering::Relaxed)) {
                            let mut stream = pool.stream();
                            let mut cut = chunker.chunks(data).peekable();
                            let mut offset = 0;
                            while let Some(piece) = cut.next() {
                                let last = cut.peek().is_none();
                                let chunk = data.part(offset..offset + piece.len());
                                stream.push(&chunk, last).expect("sealing does not fail");
                                offset += piece.len();
                                chunks += 1;
                            }
                            stream.finish().expect("sealing does not fail");
                        }
                        chunks
                    })
                })
                .collect();
            readers
                .into_iter()
                .map(|r| r.join().expect("pipeline readers do not panic"))
                .sum()
        })
    })
}

/// The regular files below `root` (or `root` itself), symlinks not followed.
fn regular_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if metadata.is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
                pending.push(entry.path());
            }
        } else if metadata.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_of_every_file_goes_through_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 3 << 20]).unwrap();
        std::fs::write(dir.path().join("sub/b"), b"small").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("link")).unwrap();
        let speed = measure(&[dir.path().to_path_buf()], 2, 3).unwrap();
        assert_eq!(speed.files, 2);
        assert_eq!(speed.bytes, (3 << 20) + 5);
        assert!(speed.chunks >= 2, "{speed:?}");
        assert!(speed.seconds > 0.0);
    }
}
