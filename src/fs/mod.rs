//! The local filesystem as cairn reads it: a live file's entry (`meta`: `lstat`, `readlink`,
//! xattrs), paths opened beneath a root without following symlinks (`beneath`), files written
//! with holes (`sparse`), reads and transfers held to a rate (`throttle`), and large files
//! read around the page cache (`uncached`). Writing a target tree belongs to `target`.

#[cfg(feature = "server")]
pub(crate) mod beneath;
pub(crate) mod meta;
pub(crate) mod sparse;
pub mod throttle;
pub mod uncached;
