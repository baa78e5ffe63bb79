//! Benchmarks and examples of fanout with heavy dependencies.
