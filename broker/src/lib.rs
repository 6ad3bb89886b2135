//! The Weir broker library.
