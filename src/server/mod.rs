//! Server runtime (filled by the server work).
