//! weft-sim library.
