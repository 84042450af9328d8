//! Drift: how far live data has moved from a model's reference.
//!
//! - [`window`]: statistics of a window's histogram over the reference's bins (PSI, KS,
//!   Wasserstein-1), the comparison the differential drift windows make at every slide;
//! - [`sequential`]: change detectors that read one value at a time (shifts in mean and in
//!   variance), for a fast reaction between slides.

pub mod sequential;
pub mod window;
