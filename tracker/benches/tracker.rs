//! Criterion benchmarks of the tracker (filled in by the benchmark step).
fn main() {}
