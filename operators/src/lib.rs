//! Pure operator logic: validators, feature extractors, detectors, drift statistics.
//!
//! No I/O and no timely here, so that everything can be unit- and property-tested.

pub mod cusum;
pub mod detector;
pub mod drift;
pub mod episode;
pub mod evaluate;
pub mod features;
pub mod kmeans;
pub mod model;
pub mod outliers;
pub mod sensor;
pub mod validate;
