//! `cstorage layer export`.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
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
    // The output rules (crate `output`): `-` or no -o is standard output, never a terminal.
    let out = composefs_storage::OutputFile::create(output.unwrap_or(Path::new("-")))?;
    let pb = progress_bar(
        l.diff_size(),
        format!("layer {}", crate::fmt::short_id(l.id())),
    );
    let mut opts = ExportOptions::new(verify);
    if let Some(pb) = &pb {
        let pb = pb.clone();
        opts = opts.with_progress(Arc::new(move |n| pb.set_position(n)));
    }
    let report = l.export_to_fd(out.as_fd(), out.name(), &opts)?;
    out.commit()?;
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

/// The name to record for an image looked up by `query`: the stored name it matched, else
/// the image's first name.
fn record_name(img: &composefs_storage::Image, query: &str) -> Option<String> {
    let names = img.names();
    if names.iter().any(|n| n == query) {
        return Some(query.to_string());
    }
    if let Ok(r) = composefs_storage::reference::Reference::parse_normalized(query) {
        let full = r.with_default_tag().to_string();
        if names.contains(&full) {
            return Some(full);
        }
        if let Ok(l) =
            composefs_storage::reference::Reference::parse_normalized(&format!("localhost/{query}"))
        {
            let full = l.with_default_tag().to_string();
            if names.contains(&full) {
                return Some(full);
            }
        }
    }
    names.iter().find(|n| !n.contains('@')).cloned()
}

pub fn images(
    storage: &composefs_storage::Storage,
    queries: &[String],
    output: &Path,
    format: composefs_storage::image_export::ArchiveFormat,
    (compression, level, jobs): (
        composefs_storage::image_export::LayerCompression,
        Option<i32>,
        usize,
    ),
    stream_verify: Option<Verify>,
) -> Result<()> {
    use composefs_storage::image_export::{ExportItem, ImageExportOptions, export_images};
    let mut items = Vec::new();
    for q in queries {
        let image = storage.find_image(q)?;
        let name = record_name(&image, q);
        items.push(ExportItem { image, name });
    }
    let mut opts = ImageExportOptions::new(format);
    opts.compression = compression;
    opts.level = level;
    opts.jobs = jobs;
    opts.stream_verify = stream_verify;
    // Progress: a bar per layer and one for the total, on a terminal only.
    let mut total: u64 = 0;
    let mut seen = std::collections::HashSet::new();
    for it in &items {
        for l in it.image.layers()? {
            if seen.insert(l.id().to_string()) {
                total += l.diff_size().unwrap_or(0);
            }
        }
    }
    let multi = std::io::stderr()
        .is_terminal()
        .then(indicatif::MultiProgress::new);
    if let Some(m) = &multi {
        let style = indicatif::ProgressStyle::with_template(
            "{msg:>14} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        let total_bar = m.add(
            indicatif::ProgressBar::new(total)
                .with_style(style.clone())
                .with_message("total"),
        );
        let bars: std::sync::Mutex<
            std::collections::HashMap<String, (indicatif::ProgressBar, u64)>,
        > = Default::default();
        let m2 = m.clone();
        opts.progress = Some(Arc::new(move |id: &str, n: u64, len: Option<u64>| {
            let Ok(mut b) = bars.lock() else { return };
            let entry = b.entry(id.to_string()).or_insert_with(|| {
                let pb = m2.insert_before(
                    &total_bar,
                    indicatif::ProgressBar::new(len.unwrap_or(0)).with_style(style.clone()),
                );
                pb.set_message(crate::fmt::short_id(id).to_string());
                (pb, 0)
            });
            total_bar.inc(n.saturating_sub(entry.1));
            entry.1 = n;
            entry.0.set_position(n);
        }));
    }
    let report = export_images(&items, output, &opts)?;
    if let Some(m) = multi {
        let _ = m.clear();
    }
    for (id, digest, name) in &report.images {
        log::info!(
            "exported {id} {} {}",
            digest.as_ref().map(|d| d.to_string()).unwrap_or_default(),
            name.as_deref().unwrap_or("")
        );
    }
    log::info!(
        "{} layer blobs written ({} bytes), {} reused",
        report.blobs_written,
        report.bytes,
        report.blobs_reused
    );
    Ok(())
}

/// `cstorage verify`: prints a table (or JSON) of checks; returns how many failed.
pub fn verify(
    images: &[composefs_storage::Image],
    opts: &composefs_storage::verify::VerifyOptions,
    out: &mut impl std::io::Write,
    json: bool,
) -> Result<usize> {
    use composefs_storage::verify::verify_images_with;
    let pb = progress_bar(None, "verifying layers".into());
    let progress: Option<composefs_storage::verify::VerifyProgress> = pb.as_ref().map(|pb| {
        let pb = pb.clone();
        let f: composefs_storage::verify::VerifyProgress =
            Arc::new(move |_id: &str, size: Option<u64>, done: bool| {
                if done {
                    pb.inc(size.unwrap_or(0));
                } else {
                    pb.inc_length(size.unwrap_or(0));
                }
            });
        f
    });
    let checks = verify_images_with(images, opts, progress);
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let bad = checks.iter().filter(|c| !c.ok).count();
    if json {
        serde_json::to_writer_pretty(&mut *out, &checks)?;
        writeln!(out)?;
    } else {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                let detail = if c.ok {
                    shorten(&c.detail)
                } else {
                    c.detail.clone()
                };
                vec![
                    if c.ok { "ok" } else { "FAILED" }.to_string(),
                    shorten(&c.subject),
                    detail,
                ]
            })
            .collect();
        crate::fmt::table(out, &["STATUS", "CHECK", "DETAIL"], &rows)?;
    }
    Ok(bad)
}

/// Shortens 64-hex IDs and digests in a message to 12 characters, for tables.
fn shorten(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            let (prefix, rest) = match w.split_once(':') {
                Some((p, r)) if p.ends_with("sha256") => (&w[..p.len() + 1], r),
                _ => ("", w),
            };
            if rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                format!("{prefix}{}", &rest[..12])
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
