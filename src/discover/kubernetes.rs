//! kubernetes discovery (being written).
