//! Sequential change detectors (to be written).
