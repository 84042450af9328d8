//! Window statistics (to be written).
