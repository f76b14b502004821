//! Directory objects ("named dir objects") and chunk lists. A tree lists the entries of one
//! directory sorted by their raw name bytes, with everything needed to recreate them. Its
//! encoding is canonical (postcard of the structs below), so its id — the hash of the
//! encoding — depends only on the content: an unchanged directory has the same id in every
//! checkpoint and is stored once. Decoding rejects hostile names (empty, `.`, `..`, or
//! containing `/` or NUL) and unsorted or repeated names, so a tree from storage can never
//! steer a restore outside its target (invariant 4).

use crate::error::{Error, Missing, Result};
use crate::id::{BlobId, TreeId};
use crate::repo::Repository;
use crate::repo::pack::{BlobKind, MAX_FILE_CHUNKS};
use crate::repo::writer::BlobSink;
use serde::{Deserialize, Serialize};

/// Files with more chunks than this keep their chunk list in a separate blob.
pub const INLINE_CHUNKS_MAX: usize = 256;

/// One chunk of a file: its blob id and plaintext length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: BlobId,
    pub length: u32,
}

/// The content of a regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// The chunks in order.
    Chunks(Vec<ChunkRef>),
    /// A `chunklist` blob holding the chunks (for very large files).
    ChunkList(BlobId),
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File(Content),
    Dir(TreeId),
    Symlink(#[serde(with = "serde_bytes")] Vec<u8>),
    Fifo,
    CharDevice(u64),
    BlockDevice(u64),
}

/// What a live listing says an entry is: its kind without what only storing it gives (a
/// directory's tree, a file's chunks), which a listed directory and file are reached by
/// path for instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListedKind {
    File,
    Dir,
    Symlink(Vec<u8>),
    Fifo,
    CharDevice(u64),
    BlockDevice(u64),
}

/// An entry as a live listing gives it (a local directory, a served source).
pub type Listed = Entry<ListedKind>;

/// The shape of an entry's kind, stored or listed: what it is and the target or device
/// number that makes it, without a directory's tree or a file's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape<'a> {
    File,
    Dir,
    Symlink(&'a [u8]),
    Fifo,
    CharDevice(u64),
    BlockDevice(u64),
}

/// A kind of entry, stored (`EntryKind`) or listed (`ListedKind`): what code that handles
/// both (a restore from a checkpoint or from a live directory) asks of it.
pub trait Kind {
    fn shape(&self) -> Shape<'_>;
    /// A stored file's content; `None` for any other entry and for a listed file.
    fn content(&self) -> Option<&Content>;
}

impl Kind for EntryKind {
    fn shape(&self) -> Shape<'_> {
        match self {
            EntryKind::File(_) => Shape::File,
            EntryKind::Dir(_) => Shape::Dir,
            EntryKind::Symlink(target) => Shape::Symlink(target),
            EntryKind::Fifo => Shape::Fifo,
            EntryKind::CharDevice(rdev) => Shape::CharDevice(*rdev),
            EntryKind::BlockDevice(rdev) => Shape::BlockDevice(*rdev),
        }
    }
    fn content(&self) -> Option<&Content> {
        match self {
            EntryKind::File(content) => Some(content),
            _ => None,
        }
    }
}

impl Kind for ListedKind {
    fn shape(&self) -> Shape<'_> {
        match self {
            ListedKind::File => Shape::File,
            ListedKind::Dir => Shape::Dir,
            ListedKind::Symlink(target) => Shape::Symlink(target),
            ListedKind::Fifo => Shape::Fifo,
            ListedKind::CharDevice(rdev) => Shape::CharDevice(*rdev),
            ListedKind::BlockDevice(rdev) => Shape::BlockDevice(*rdev),
        }
    }
    fn content(&self) -> Option<&Content> {
        None
    }
}

impl EntryKind {
    /// This kind as a listing would give it.
    pub fn listed(&self) -> ListedKind {
        match self {
            EntryKind::File(_) => ListedKind::File,
            EntryKind::Dir(_) => ListedKind::Dir,
            EntryKind::Symlink(target) => ListedKind::Symlink(target.clone()),
            EntryKind::Fifo => ListedKind::Fifo,
            EntryKind::CharDevice(rdev) => ListedKind::CharDevice(*rdev),
            EntryKind::BlockDevice(rdev) => ListedKind::BlockDevice(*rdev),
        }
    }
}

impl ListedKind {
    /// The stored kind of a listed entry that needs nothing stored: a symlink, a FIFO, a
    /// device; `None` for a directory or a file, whose tree or chunks must be stored first.
    pub fn stored(&self) -> Option<EntryKind> {
        Some(match self {
            ListedKind::File | ListedKind::Dir => return None,
            ListedKind::Symlink(target) => EntryKind::Symlink(target.clone()),
            ListedKind::Fifo => EntryKind::Fifo,
            ListedKind::CharDevice(rdev) => EntryKind::CharDevice(*rdev),
            ListedKind::BlockDevice(rdev) => EntryKind::BlockDevice(*rdev),
        })
    }
}

/// An extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One directory entry and its metadata; its kind is stored (`EntryKind`, in a tree) or
/// listed (`ListedKind`, a live entry: see [`Listed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<K = EntryKind> {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub kind: K,
    /// Permission bits (the low 12 bits of `st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Modification time in nanoseconds since the epoch (see `timestamp`): an i128 holds
    /// every time a filesystem can, and postcard encodes it exactly as it did the i64 of
    /// earlier versions (a zigzag varint), so trees keep their bytes and ids.
    pub mtime_ns: i128,
    /// Status-change time, in the same form.
    pub ctime_ns: i128,
    /// Bytes of a regular file (0 for other kinds).
    pub size: u64,
    pub device: u64,
    pub inode: u64,
    /// Hard-link count at backup time; entries of one checkpoint sharing `device` and `inode`
    /// with a count above one are restored as hard links of each other.
    pub links: u64,
    pub xattrs: Vec<Xattr>,
}

impl<K: Kind> Entry<K> {
    pub fn name_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }

    pub fn is_dir(&self) -> bool {
        self.kind.shape() == Shape::Dir
    }

    pub fn is_file(&self) -> bool {
        self.kind.shape() == Shape::File
    }

    /// A one-letter kind as `ls -l` shows it.
    pub fn type_char(&self) -> char {
        match self.kind.shape() {
            Shape::File => '-',
            Shape::Dir => 'd',
            Shape::Symlink(_) => 'l',
            Shape::Fifo => 'p',
            Shape::CharDevice(_) => 'c',
            Shape::BlockDevice(_) => 'b',
        }
    }

    /// The `(device, inode)` hard-link group of a regular file linked more than once.
    pub fn hardlink_key(&self) -> Option<(u64, u64)> {
        (self.is_file() && self.links > 1).then_some((self.device, self.inode))
    }

    /// This entry's metadata with another kind.
    pub fn with_kind<L>(self, kind: L) -> Entry<L> {
        Entry {
            name: self.name,
            kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            user: self.user,
            group: self.group,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            size: self.size,
            device: self.device,
            inode: self.inode,
            links: self.links,
            xattrs: self.xattrs,
        }
    }
}

impl Entry {
    /// This stored entry as a listing would give it.
    pub fn into_listed(self) -> Listed {
        let kind = self.kind.listed();
        self.with_kind(kind)
    }
}

/// Whether `name` is safe as one path component.
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// The entries of one directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

impl Tree {
    /// Sorts entries into canonical order.
    pub fn from_entries(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Tree { entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("trees serialize")
    }

    /// Decodes and validates a tree; `location` names it in errors.
    pub fn decode(bytes: &[u8], location: &dyn Fn() -> String) -> Result<Self> {
        let tree: Tree = postcard::from_bytes(bytes)
            .map_err(|e| Error::corrupt(location(), format!("undecodable tree: {e}")))?;
        for entry in &tree.entries {
            if !is_valid_name(&entry.name) {
                return Err(Error::corrupt(
                    location(),
                    format!("hostile entry name {:?}", entry.name_lossy()),
                ));
            }
        }
        if tree.entries.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(Error::corrupt(
                location(),
                "entries are not sorted and unique",
            ));
        }
        Ok(tree)
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.position(name).map(|i| &self.entries[i])
    }

    /// Where the entry called `name` is in the (sorted) entries, if there is one.
    pub fn position(&self, name: &[u8]) -> Option<usize> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
    }
}

/// Stores `tree` through `sink` (deduplicated like any blob); returns its id.
pub fn store_tree(sink: &BlobSink, tree: &Tree) -> Result<TreeId> {
    let id = sink.store(BlobKind::Tree, &tree.encode())?;
    Ok(TreeId(id.0))
}

/// Reads and validates tree `id`.
pub fn load_tree(repo: &Repository, id: &TreeId) -> Result<Tree> {
    let bytes = repo.read_tree_blob(&id.blob())?;
    Tree::decode(&bytes, &|| format!("tree {id}"))
}

/// The chunks of a file's content, reading its chunk list blob when it has one.
pub fn file_chunks(repo: &Repository, content: &Content) -> Result<Vec<ChunkRef>> {
    match content {
        Content::Chunks(chunks) => Ok(chunks.clone()),
        Content::ChunkList(id) => decode_chunk_list(&repo.read_blob(id)?, id),
    }
}

/// The chunks of a regular file recorded as `size` bytes, checked against that size: what
/// reads a file's bytes uses this, so it never serves more or less than the file claims.
pub fn sized_file_chunks(repo: &Repository, content: &Content, size: u64) -> Result<Vec<ChunkRef>> {
    let chunks = file_chunks(repo, content)?;
    check_file_size(&chunks, size)
        .map_err(|problem| Error::corrupt(content_location(content), problem))?;
    Ok(chunks)
}

/// Why `chunks` cannot be the content of a file of `size` bytes, if they cannot: there are
/// more than `MAX_FILE_CHUNKS`, or their lengths do not add up to `size`.
pub fn check_file_size(chunks: &[ChunkRef], size: u64) -> std::result::Result<(), String> {
    if chunks.len() as u64 > u64::from(MAX_FILE_CHUNKS) {
        return Err(format!(
            "{} chunks, more than the {MAX_FILE_CHUNKS} a file may have",
            chunks.len()
        ));
    }
    let total: u64 = chunks.iter().map(|c| u64::from(c.length)).sum();
    if total != size {
        return Err(format!(
            "the file's recorded size is {size} bytes but its chunks hold {total}"
        ));
    }
    Ok(())
}

/// How errors name a file's content: its chunk list, or its first chunk.
fn content_location(content: &Content) -> String {
    match content {
        Content::ChunkList(id) => format!("chunk list {id}"),
        Content::Chunks(chunks) => match chunks.first() {
            Some(chunk) => format!("file content starting with blob {}", chunk.id),
            None => "empty file content".to_owned(),
        },
    }
}

/// Where chunk `chunk` is stored, once its recorded raw length is the length the tree gives
/// it: a blob whose length differs is refused unread.
pub fn locate_chunk(
    repo: &Repository,
    chunk: &ChunkRef,
) -> Result<crate::repo::index::BlobLocation> {
    let location = repo.locate(&chunk.id)?;
    if location.entry.raw_length != chunk.length {
        return Err(Error::corrupt(
            format!("blob {}", chunk.id),
            format!(
                "holds {} bytes where the tree says {}",
                location.entry.raw_length, chunk.length
            ),
        ));
    }
    Ok(location)
}

/// The bytes of one chunk, checked against the length the tree gives it before anything is
/// read (`locate_chunk`).
pub fn read_chunk(repo: &Repository, chunk: &ChunkRef) -> Result<Vec<u8>> {
    repo.read_blob_at(&locate_chunk(repo, chunk)?, &chunk.id)
}

/// Decodes chunk list blob `id` (its size already bounded by `MAX_CHUNK_LIST_BYTES`), refusing
/// more than `MAX_FILE_CHUNKS` chunks.
pub fn decode_chunk_list(bytes: &[u8], id: &BlobId) -> Result<Vec<ChunkRef>> {
    let chunks: Vec<ChunkRef> = postcard::from_bytes(bytes)
        .map_err(|e| Error::corrupt(format!("chunk list {id}"), e.to_string()))?;
    if chunks.len() as u64 > u64::from(MAX_FILE_CHUNKS) {
        return Err(Error::corrupt(
            format!("chunk list {id}"),
            format!(
                "{} chunks, more than the {MAX_FILE_CHUNKS} a file may have",
                chunks.len()
            ),
        ));
    }
    Ok(chunks)
}

/// Encodes a chunk list blob.
pub fn encode_chunk_list(chunks: &[ChunkRef]) -> Vec<u8> {
    postcard::to_stdvec(chunks).expect("chunk lists serialize")
}

/// The entry at `path` (components separated by `/`) below the directory entry `root`; an
/// empty path gives `root` itself.
pub fn find_entry(repo: &Repository, root: Entry, path: &str) -> Result<Entry> {
    let mut current = root;
    let mut walked = String::new();
    for component in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let EntryKind::Dir(tree_id) = current.kind else {
            return Err(Error::not_found(
                Missing::PathInCheckpoint {
                    path: walked.clone(),
                },
                format!("{walked} is not a directory"),
            ));
        };
        let tree = load_tree(repo, &tree_id)?;
        walked = if walked.is_empty() {
            component.to_owned()
        } else {
            format!("{walked}/{component}")
        };
        current = tree.get(component.as_bytes()).cloned().ok_or_else(|| {
            Error::not_found(
                Missing::PathInCheckpoint {
                    path: walked.clone(),
                },
                format!("no {walked} in this checkpoint"),
            )
        })?;
    }
    Ok(current)
}

/// A nameless directory entry for a root tree that has no metadata of its own (the root of a
/// checkpoint of several paths).
pub fn root_entry(root: TreeId) -> Entry {
    Entry {
        name: Vec::new(),
        kind: EntryKind::Dir(root),
        mode: 0o755,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime_ns: 0,
        ctime_ns: 0,
        size: 0,
        device: 0,
        inode: 0,
        links: 1,
        xattrs: Vec::new(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_entry() -> impl Strategy<Value = Entry> {
        let kind = prop_oneof![
            proptest::collection::vec((any::<[u8; 32]>(), any::<u32>()), 0..4).prop_map(|c| {
                EntryKind::File(Content::Chunks(
                    c.into_iter()
                        .map(|(id, length)| ChunkRef {
                            id: BlobId(id),
                            length,
                        })
                        .collect(),
                ))
            }),
            any::<[u8; 32]>().prop_map(|id| EntryKind::File(Content::ChunkList(BlobId(id)))),
            any::<[u8; 32]>().prop_map(|id| EntryKind::Dir(TreeId(id))),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(EntryKind::Symlink),
            Just(EntryKind::Fifo),
            any::<u64>().prop_map(EntryKind::CharDevice),
            any::<u64>().prop_map(EntryKind::BlockDevice),
        ];
        (
            proptest::collection::vec(1u8..=255, 1..20).prop_filter("valid", |n| is_valid_name(n)),
            kind,
            any::<(u32, u32, u32, i128, i128, u64)>(),
            proptest::option::of("[a-z]{1,8}"),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 1..10),
                    proptest::collection::vec(any::<u8>(), 0..10),
                ),
                0..3,
            ),
        )
            .prop_map(
                |(name, kind, (mode, uid, gid, mtime_ns, ctime_ns, size), user, xattrs)| Entry {
                    name,
                    kind,
                    mode,
                    uid,
                    gid,
                    user: user.clone(),
                    group: user,
                    mtime_ns,
                    ctime_ns,
                    size,
                    device: 1,
                    inode: size,
                    links: 1,
                    xattrs: xattrs
                        .into_iter()
                        .map(|(name, value)| Xattr { name, value })
                        .collect(),
                },
            )
    }

    proptest! {
        #[test]
        fn trees_round_trip(entries in proptest::collection::vec(arb_entry(), 0..10)) {
            let mut entries = entries;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            entries.dedup_by(|a, b| a.name == b.name);
            let tree = Tree::from_entries(entries);
            let bytes = tree.encode();
            prop_assert_eq!(Tree::decode(&bytes, &|| "t".into()).unwrap(), tree.clone());
            prop_assert_eq!(bytes, tree.encode(), "encoding is canonical");
        }
    }

    /// An entry encoded as cairn encoded it while its times were i64: the same fields in the
    /// same order, the times as i64 zigzag varints.
    fn encode_with_i64_times(entry: &Entry) -> Vec<u8> {
        let old = (
            serde_bytes::Bytes::new(&entry.name),
            &entry.kind,
            entry.mode,
            entry.uid,
            entry.gid,
            &entry.user,
            &entry.group,
            i64::try_from(entry.mtime_ns).unwrap(),
            i64::try_from(entry.ctime_ns).unwrap(),
            entry.size,
            entry.device,
            entry.inode,
            entry.links,
            &entry.xattrs,
        );
        postcard::to_stdvec(&old).unwrap()
    }

    proptest! {
        #[test]
        fn entries_with_i64_times_keep_their_encoding(
            entry in arb_entry(),
            mtime_ns in any::<i64>(),
            ctime_ns in any::<i64>(),
        ) {
            let entry = Entry { mtime_ns: mtime_ns.into(), ctime_ns: ctime_ns.into(), ..entry };
            let old = encode_with_i64_times(&entry);
            let tree = Tree { entries: vec![entry] };
            let mut old_tree = vec![1];
            old_tree.extend_from_slice(&old);
            prop_assert_eq!(&tree.encode(), &old_tree, "the same bytes, so the same tree id");
            prop_assert_eq!(Tree::decode(&old_tree, &|| "t".into()).unwrap(), tree);
        }
    }

    #[test]
    fn hostile_names_are_rejected() {
        for name in [&b".."[..], b".", b"", b"a/b", b"a\0"] {
            let mut entry = root_entry(TreeId([0; 32]));
            entry.name = name.to_vec();
            let bytes = Tree {
                entries: vec![entry],
            }
            .encode();
            assert!(Tree::decode(&bytes, &|| "t".into()).is_err(), "{name:?}");
        }
    }

    #[test]
    fn unsorted_entries_are_rejected() {
        let mut a = root_entry(TreeId([0; 32]));
        a.name = b"b".to_vec();
        let mut b = a.clone();
        b.name = b"a".to_vec();
        let bytes = Tree {
            entries: vec![a, b],
        }
        .encode();
        assert!(Tree::decode(&bytes, &|| "t".into()).is_err());
    }
}
