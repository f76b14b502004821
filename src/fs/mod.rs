//! The local filesystem as cairn reads it: a live file's entry (`meta`: `lstat`, `readlink`,
//! xattrs), paths opened beneath a root without following symlinks (`beneath`), files written
//! with holes (`sparse`), and reads and transfers held to a rate (`throttle`). Writing a target
//! tree belongs to `target`.

#[cfg(feature = "server")]
pub(crate) mod beneath;
pub(crate) mod meta;
pub(crate) mod sparse;
pub mod throttle;
