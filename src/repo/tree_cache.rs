//! Directory trees kept in the local cache for repositories a round trip away (an object
//! store, a `cairn serve`), so a no-op backup, `ls`, `history`, `diff` and the mount read a
//! tree from the store once, not on every run: a backup compares its whole parent tree with
//! the disk, and on a store each tree would be a request.
//!
//! Each tree is kept as the repository stores it (sealed when the repository is encrypted,
//! compressed), in `trees/XX/ID` beside the index cache, written by the backup that stores it
//! and by the first read that fetches it. A kept tree is opened and checked against its id
//! on every read, so a damaged or planted file is ignored (and replaced), never trusted;
//! files are replaced by rename and private (0600 in 0700 directories). `check` never reads
//! this cache: it verifies the repository itself.

use super::codec::Codec;
use super::pack::MAX_TREE_BYTES;
use crate::id::BlobId;
use std::path::PathBuf;

/// Where kept trees live; `None` for a repository on a local disk, where a tree is a read of
/// a local pack anyway.
pub(crate) struct TreeCache {
    dir: Option<PathBuf>,
}

impl TreeCache {
    pub(crate) fn in_dir(dir: Option<PathBuf>) -> Self {
        TreeCache { dir }
    }

    fn path_of(&self, id: &BlobId) -> Option<PathBuf> {
        let hex = id.to_hex();
        Some(self.dir.as_ref()?.join(&hex[..2]).join(hex))
    }

    /// The plaintext of tree `id` if it is kept and opens to bytes with that id.
    pub(crate) fn get(&self, codec: &Codec, id: &BlobId) -> Option<Vec<u8>> {
        let stored = std::fs::read(self.path_of(id)?).ok()?;
        let plaintext = codec
            .decode(&stored, u64::from(MAX_TREE_BYTES), &|| {
                format!("kept tree {id}")
            })
            .ok()?;
        (codec.id_of(&plaintext) == id.0).then_some(plaintext)
    }

    /// Keeps tree `id`, stored form `stored` (as `Codec::encode` made it). A failure only
    /// means the tree is read from the repository next time.
    pub(crate) fn put(&self, id: &BlobId, stored: &[u8]) {
        let Some(path) = self.path_of(id) else {
            return;
        };
        if path.exists() {
            return;
        }
        let dir = path.parent().expect("kept trees are in a directory");
        if crate::repo::backend::create_private_dir(dir).is_err() {
            return;
        }
        let _ = crate::catalogue::write_private_atomically(&path, stored);
    }
}
