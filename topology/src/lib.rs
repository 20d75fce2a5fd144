//! weft topology core.
