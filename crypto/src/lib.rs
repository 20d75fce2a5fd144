//! weft crypto.
