//! Configuration (filled by the config work).
