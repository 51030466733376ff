//! The append-only log (in progress: the durable-storage issue). Today: record framing and
//! recovery scanning, with crash tests; segments, io_uring writes and group commit follow.

pub mod record;
