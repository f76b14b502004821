//! The kinds of objects a repository holds and the names they are stored under: the one
//! place that spells the layout (`config`, `keys/`, `data/`, `index/`, `checkpoints/`,
//! `locks/`, `plans/`; docs/FORMAT.md describes each).

/// The name of the repository's config object.
pub const CONFIG: &str = "config";

/// A kind of object in a repository; every object of a kind is named under its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A key file: the master key sealed with a password.
    Key,
    /// A pack of encrypted blobs (named `data/<2 hex>/<hex id>`).
    Pack,
    /// An index file: which blobs the packs hold.
    Index,
    /// A checkpoint record.
    Checkpoint,
    /// A lock object of a run under way.
    Lock,
    /// A plan whose checkpoints the repository keeps, so a new machine can recover it.
    Plan,
}

impl ObjectKind {
    /// Every kind.
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Key,
        ObjectKind::Pack,
        ObjectKind::Index,
        ObjectKind::Checkpoint,
        ObjectKind::Lock,
        ObjectKind::Plan,
    ];

    /// The directory the kind's objects are named under, with its slash: the prefix to list
    /// them by.
    pub const fn prefix(self) -> &'static str {
        match self {
            ObjectKind::Key => "keys/",
            ObjectKind::Pack => "data/",
            ObjectKind::Index => "index/",
            ObjectKind::Checkpoint => "checkpoints/",
            ObjectKind::Lock => "locks/",
            ObjectKind::Plan => "plans/",
        }
    }

    /// The kind whose directory is `dir` (a name's first component, without its slash).
    pub fn from_dir(dir: &str) -> Option<ObjectKind> {
        ObjectKind::ALL
            .into_iter()
            .find(|kind| kind.prefix().strip_suffix('/') == Some(dir))
    }

    /// The kind an object named `name` is of; `None` for the config and unknown names.
    pub fn of(name: &str) -> Option<ObjectKind> {
        ObjectKind::from_dir(name.split_once('/')?.0)
    }

    /// The name of the kind's object `leaf` (for a pack, see `pack::pack_object_name`).
    pub fn name(self, leaf: &str) -> String {
        format!("{}{leaf}", self.prefix())
    }
}

/// Whether `name` is an object name of the repository layout: `config`, or a known top-level
/// directory followed by plain components (no `.`, `..` or empty parts, hex and a few safe
/// characters only).
pub fn valid_object_name(name: &str) -> bool {
    if name == CONFIG {
        return true;
    }
    let mut parts = name.split('/');
    let top_ok = parts.next().and_then(ObjectKind::from_dir).is_some();
    let rest: Vec<&str> = parts.collect();
    top_ok
        && !rest.is_empty()
        && rest.iter().all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_dirs_with_a_slash_and_names_map_back_to_their_kind() {
        for kind in ObjectKind::ALL {
            let dir = kind
                .prefix()
                .strip_suffix('/')
                .expect("a prefix ends in a slash");
            assert!(!dir.is_empty() && !dir.contains('/'), "{kind:?}");
            assert_eq!(ObjectKind::from_dir(dir), Some(kind));
            assert_eq!(ObjectKind::of(&kind.name("ab12")), Some(kind));
        }
        assert_eq!(ObjectKind::of(CONFIG), None);
        assert_eq!(ObjectKind::of("other/x"), None);
    }
}
