//! MVCC index.
