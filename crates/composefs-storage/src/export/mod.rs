//! Layers and images out of the store: a layer's tar rebuilt from its tar-split (or generated
//! from `diff/` for container layers, as c/storage's diff does) and images written as an OCI
//! layout, oci-archive or docker-archive.

pub mod image;
pub(crate) mod layer;
pub(crate) mod naive_diff;
pub(crate) mod native_diff;
mod options;

pub use options::{ExportOptions, ExportReport, Progress, Verify};
