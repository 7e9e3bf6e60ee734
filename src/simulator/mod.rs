//! (placeholder, filled by its part)
