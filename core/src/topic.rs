//! Topic patterns (placeholder: being written).
