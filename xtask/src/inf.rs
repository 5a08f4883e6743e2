//! INF checks (being written).
