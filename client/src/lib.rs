//! Weir client SDK.
