//! Pure operator logic: validators, feature extractors, detectors, drift statistics.
//!
//! No I/O and no timely here, so that everything can be unit- and property-tested.

pub mod detector;
pub mod evaluate;
pub mod kmeans;
pub mod model;
pub mod sensor;
