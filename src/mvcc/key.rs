//! A key as the index keeps it: up to 22 bytes inside the B-tree's slot (no allocation, no
//! pointer to follow while searching), longer keys in one exact-size heap allocation.
//!
//! The index used `Bytes` keys: 32 bytes in the slot, plus the key's allocation, plus a shared
//! header once cloned (for the change ring or a response): about 64 bytes of heap per key on
//! top of the slot, and a cache miss per comparison.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

/// The longest key kept inline.
pub const INLINE: usize = 22;

#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<Key>() == 24);

impl Key {
    pub fn new(k: &[u8]) -> Key {
        if k.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..k.len()].copy_from_slice(k);
            Key(Repr::Inline {
                len: k.len() as u8,
                bytes,
            })
        } else {
            Key(Repr::Heap(k.into()))
        }
    }

    /// A copy of the key in its own buffer (for a response or an event).
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl Deref for Key {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Heap(b) => b,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<&[u8]> for Key {
    fn from(k: &[u8]) -> Key {
        Key::new(k)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        **self == **other
    }
}

impl Eq for Key {}

impl PartialEq<[u8]> for Key {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        (**self).cmp(&**other)
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (**self).hash(h)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Bytes::copy_from_slice(self), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Keys order, compare and hash as their bytes, inline or not.
        #[test]
        fn keys_behave_as_their_bytes(
            a in proptest::collection::vec(any::<u8>(), 0..40),
            b in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let (ka, kb) = (Key::new(&a), Key::new(&b));
            prop_assert_eq!(&*ka, &a[..]);
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(&ka.to_bytes()[..], &a[..]);
            let hash = |x: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                x(&mut h);
                h.finish()
            };
            prop_assert_eq!(hash(&|h| ka.hash(h)), hash(&|h| a[..].hash(h)));
        }
    }

    #[test]
    fn keys_up_to_22_bytes_are_inline() {
        assert!(matches!(Key::new(&[1; 22]).0, Repr::Inline { .. }));
        assert!(matches!(Key::new(&[1; 23]).0, Repr::Heap(_)));
        assert!(matches!(Key::new(b"").0, Repr::Inline { len: 0, .. }));
    }
}
