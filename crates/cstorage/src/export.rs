//! `cstorage layer export`.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use composefs_storage::{ExportOptions, Layer, Verify};

/// A progress bar on stderr when it is a terminal; nothing otherwise.
pub fn progress_bar(len: Option<u64>, msg: String) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::no_length(),
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(msg);
    Some(pb)
}

pub fn layer(l: &Layer, output: Option<&Path>, verify: Verify) -> Result<()> {
    if output.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write a tar to a terminal: use -o FILE or redirect standard output");
    }
    let pb = progress_bar(
        l.diff_size(),
        format!("layer {}", crate::fmt::short_id(l.id())),
    );
    let mut opts = ExportOptions::new(verify);
    if let Some(pb) = &pb {
        let pb = pb.clone();
        opts = opts.with_progress(Arc::new(move |n| pb.set_position(n)));
    }
    let report = match output {
        Some(p) => l.export_to_path(p, &opts)?,
        None => {
            let stdout = std::io::stdout();
            let lock = stdout.lock();
            l.export_to_fd(lock.as_fd(), Path::new("standard output"), &opts)?
        }
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if !report.reproducible {
        log::warn!(
            "layer {} has no tar-split: the tar was generated from its diff directory and is not the original (its digest will not match any DiffID)",
            l.id()
        );
    }
    if let Some(d) = &report.digest {
        log::info!(
            "layer {}: {} bytes, {} files, {d} verified",
            l.id(),
            report.bytes,
            report.files
        );
    }
    Ok(())
}
