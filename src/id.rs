//! Object ids: 32-byte BLAKE3 hashes, one newtype per kind of object so a pack id can never
//! be passed where a blob id is expected. Ids print as lowercase hex; the short form used in
//! listings is the first 8 hex digits.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Length of every id in bytes.
pub const ID_BYTES: usize = 32;

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; ID_BYTES]);

        /// Hex in human-readable formats (JSON), 32 raw bytes in binary ones.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(serializer)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let text = String::deserialize(deserializer)?;
                    Self::from_hex(&text).ok_or_else(|| {
                        serde::de::Error::custom(format!("{text:?} is not a 64-digit hex id"))
                    })
                } else {
                    <[u8; ID_BYTES]>::deserialize(deserializer).map(Self)
                }
            }
        }

        impl $name {
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, as shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            pub fn from_hex(text: &str) -> Option<Self> {
                let mut bytes = [0u8; ID_BYTES];
                hex::decode_to_slice(text, &mut bytes).ok()?;
                Some(Self(bytes))
            }

            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                Some(Self(bytes.try_into().ok()?))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

define_id!(
    /// Id of a blob (a file chunk, a tree or a chunk list): the (keyed) hash of its plaintext.
    BlobId
);
define_id!(
    /// Id of a tree: the blob holding one directory's entries. A tree is stored as a blob,
    /// so its id is that blob's (`blob()`), but a tree id names a directory: it is what a
    /// directory entry and a checkpoint record refer to, and only trees are loaded by it.
    TreeId
);

impl TreeId {
    /// The blob the tree is stored as.
    pub const fn blob(self) -> BlobId {
        BlobId(self.0)
    }
}

impl From<TreeId> for BlobId {
    fn from(tree: TreeId) -> BlobId {
        tree.blob()
    }
}

define_id!(
    /// Id of a pack file: the plain BLAKE3 hash of the pack's bytes as stored.
    PackId
);
define_id!(
    /// Id of a checkpoint: the (keyed) hash of its record's plaintext.
    CheckpointId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_short_is_a_prefix() {
        let id = BlobId(*blake3::hash(b"cairn").as_bytes());
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
        assert!(id.to_hex().starts_with(&id.short()));
        assert_eq!(id.short().len(), 8);
        assert_eq!(BlobId::from_hex("zz"), None);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.to_hex()));
        assert_eq!(serde_json::from_str::<BlobId>(&json).unwrap(), id);
        let binary = postcard::to_stdvec(&id).unwrap();
        assert_eq!(binary, id.0);
        assert_eq!(postcard::from_bytes::<BlobId>(&binary).unwrap(), id);
    }
}
