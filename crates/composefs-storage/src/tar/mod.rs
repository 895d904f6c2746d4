//! Tar as containers-storage keeps it: the tar-split metadata of each layer (the tar's own
//! bytes, without file contents), the zstd:chunked table of contents, and tar headers read
//! and written with Go's exact bytes.

pub mod header;
pub(crate) mod names;
pub(crate) mod pax;
pub(crate) mod stream;
pub mod tar_split;
pub(crate) mod toc;
