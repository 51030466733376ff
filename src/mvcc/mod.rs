//! The multi-version concurrency control index, with etcd's exact revision semantics.
//!
//! Pure: no I/O, no clocks. A B-tree maps each key to its [`key_index::KeyIndex`] (generations
//! of revisions); every revision records where its value lives in a [`store::ValueStore`]. The
//! value store is a trait so that the durable log can serve values from its mapping while the
//! index stays in memory.

pub mod index;
pub mod key;
pub mod key_index;
pub mod store;

pub use key::Key;
pub use key_index::ValueRef;
pub use store::{
    Change, KeySpan, MemValues, RangeResult, ReadOpts, SteppedRead, Store, ValueStore, WriteTxn,
};

use crate::error::EtcdError;

/// A point in the store's history: `main` counts write transactions, `sub` orders the changes
/// inside one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// Failures of reads and compactions against history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MvccError {
    /// The revision asked for has been compacted away.
    Compacted,
    /// The revision asked for is newer than the store's.
    FutureRev,
}

impl From<MvccError> for EtcdError {
    fn from(e: MvccError) -> EtcdError {
        match e {
            MvccError::Compacted => EtcdError::Compacted,
            MvccError::FutureRev => EtcdError::FutureRev,
        }
    }
}
