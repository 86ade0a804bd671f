//! dns discovery (being written).
