//! file discovery (being written).
