//! The shared harness: the only place that knows how to start what the tests talk to.
