//! ferroctl (filled by the ctl work).
