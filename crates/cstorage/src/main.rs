//! `cstorage`: read containers-storage (podman/buildah/skopeo/CRI-O) stores.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod composefs;
mod export;
mod fmt;
mod ls;
mod rootfs;
mod views;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use composefs_storage::{Storage, StorageConfig};

use crate::fmt::{human_ago, human_size, short_id, table};
use crate::views::{ContainerSummary, ImageDetail, ImageSummary, Info, LayerDetail, LayerSummary};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

/// Read containers-storage (podman, buildah, skopeo, CRI-O) image stores without Go, a daemon,
/// root or a mount.
#[derive(Parser, Debug)]
#[command(name = "cstorage", version, about, max_term_width = 100)]
struct Cli {
    /// Graph root of the store (default: from storage.conf, as podman finds it).
    #[arg(long, global = true, value_name = "PATH")]
    root: Option<PathBuf>,
    /// Run root of the store.
    #[arg(long, global = true, value_name = "PATH")]
    runroot: Option<PathBuf>,
    /// Storage driver (only overlay is supported).
    #[arg(long, global = true, value_name = "DRIVER")]
    storage_driver: Option<String>,
    /// Storage driver option, e.g. overlay.imagestore=/path (replaces configured options;
    /// repeatable).
    #[arg(long, global = true, value_name = "OPTION")]
    storage_opt: Vec<String>,
    /// Output format: table or json; for `image export`: oci, oci-archive or docker-archive.
    #[arg(long, global = true, value_name = "FORMAT")]
    format: Option<String>,
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL", value_parser = parse_level)]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the resolved store configuration and counts.
    Info,
    /// List images.
    Images {
        /// Print only image IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Also list intermediate images (no name, and a child image: built on their top
        /// layer with their DiffIDs and one more history entry), which are hidden by default
        /// as `podman images` hides them.
        #[arg(short, long)]
        all: bool,
    },
    /// Image commands.
    #[command(subcommand)]
    Image(ImageCommand),
    /// List layers.
    Layers {
        /// Print only layer IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Layer commands.
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Check images against the digests the store records: every layer's files (CRC-64) and
    /// tar (sha256 = diff-digest), manifests and configs, and the config's DiffIDs.
    /// Exits with status 1 if anything is wrong.
    Verify {
        /// Images to check.
        images: Vec<String>,
        /// Check every image.
        #[arg(long, conflicts_with = "images")]
        all: bool,
        /// Layers checked in parallel (default: number of CPUs).
        #[arg(long, default_value_t = 0, value_name = "N")]
        jobs: usize,
    },
    /// List a directory of an image's merged root filesystem (no mount needed).
    Ls {
        /// Image ID, ID prefix, name, reference or digest.
        image: String,
        /// Path in the image (default `/`); symlinks are followed inside the image.
        path: Option<PathBuf>,
        /// Long listing: type and mode, owner, size, time, name, link target.
        #[arg(short, long)]
        long: bool,
        /// List the whole tree below PATH, one full path per line (like find).
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// Write files of an image to standard output.
    Cat {
        /// Image ID, ID prefix, name, reference or digest.
        image: String,
        /// Paths in the image; symlinks are followed inside the image.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show the metadata of a path in an image (a symlink itself, not its target).
    Stat {
        /// Image ID, ID prefix, name, reference or digest.
        image: String,
        /// Path in the image.
        path: PathBuf,
    },
    /// List the paths added (A), removed (D) or changed (C) from IMAGE_A to IMAGE_B.
    Diff {
        /// The image compared from.
        image_a: String,
        /// The image compared to.
        image_b: String,
    },
    /// Composefs images of stored images: digest, dumpfile, EROFS image.
    #[command(subcommand)]
    Composefs(composefs::ComposefsCommand),
    /// List containers.
    Containers {
        /// Print only container IDs.
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Show an image's record, manifest, config and layers as JSON.
    Inspect {
        /// Image ID, ID prefix, name, reference or digest.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Export images to an OCI layout, an oci-archive or a docker-archive.
    Export {
        /// Images (ID, prefix, name, reference or digest); several share one layout/archive.
        #[arg(required = true)]
        images: Vec<String>,
        /// Output: a directory for `oci` (created or added to), a file for archives.
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
        /// Layer compression for OCI formats: none, gzip or zstd.
        #[arg(long, default_value = "none", value_name = "ALGO")]
        compress: composefs_storage::image_export::LayerCompression,
        /// Compression level (gzip 0-9, default 1; zstd 1-22, default 3).
        #[arg(long, value_name = "N")]
        level: Option<i32>,
        /// Layers exported in parallel (default: number of CPUs).
        #[arg(long, default_value_t = 0, value_name = "N")]
        jobs: usize,
    },
}

#[derive(Subcommand, Debug)]
enum LayerCommand {
    /// Show a layer's record and on-disk details as JSON.
    Inspect {
        /// Layer ID, ID prefix, name or digest.
        #[arg(required = true)]
        layers: Vec<String>,
    },
    /// Write a layer's tar, rebuilt bit for bit from its tar-split, to a file or stdout.
    Export {
        /// Layer ID, ID prefix, name or digest; with --image, its index in the image
        /// (0 = base layer).
        layer: String,
        /// Take LAYER as an index into this image's layers.
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
        /// Output file (written under a temporary name and renamed when complete and
        /// verified); standard output if absent.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// What to verify: none, crc (each file's size and CRC-64), digest (also the sha256
        /// of the whole tar against the layer's diff-digest).
        #[arg(long, default_value = "crc", value_name = "MODE")]
        verify: composefs_storage::Verify,
    },
    /// List a layer's tar entries from its tar-split metadata (no file is opened).
    Ls {
        /// Layer ID, ID prefix, name or digest; with --image, its index in the image.
        layer: String,
        /// Take LAYER as an index into this image's layers.
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
        /// Long listing: type and mode, owner, size, time, name, link target.
        #[arg(short, long)]
        long: bool,
    },
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not one of off, error, warn, info, debug, trace"))
}

/// A minimal logger: `cstorage: LEVEL: message` on stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let level = match r.level() {
                log::Level::Warn => "warning".to_string(),
                l => l.as_str().to_lowercase(),
            };
            eprintln!("cstorage: {level}: {}", r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn open_storage(cli: &Cli) -> Result<Storage> {
    let mut config = if cli.root.is_some()
        && cli.runroot.is_none()
        && std::env::var_os("CONTAINERS_STORAGE_CONF").is_none()
    {
        // An explicit root: still take driver options and the like from storage.conf, as
        // podman does, but do not fail if that configuration is broken.
        StorageConfig::discover().unwrap_or_else(|e| {
            log::warn!("ignoring storage configuration: {e}");
            StorageConfig::default()
        })
    } else {
        StorageConfig::discover()?
    };
    if let Some(r) = &cli.root {
        config.set_graphroot(r);
    }
    if let Some(r) = &cli.runroot {
        config.set_runroot(r);
    }
    if let Some(d) = &cli.storage_driver {
        config.set_driver(d);
    }
    if !cli.storage_opt.is_empty() {
        config.set_driver_options(cli.storage_opt.clone());
    }
    Ok(Storage::open_with_config(&config)?)
}

fn run(cli: Cli) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 << 10, stdout.lock());
    let format = match (cli.format.as_deref(), &cli.command) {
        (_, Command::Image(ImageCommand::Export { .. })) => Format::Table,
        (None | Some("table"), _) => Format::Table,
        (Some("json"), _) => Format::Json,
        (Some(o), _) => anyhow::bail!("--format {o:?}: expected table or json"),
    };
    let storage = open_storage(&cli)?;
    match &cli.command {
        Command::Info => {
            let info = Info::new(&storage)?;
            if format == Format::Json {
                fmt::json(&mut out, &info)?;
            } else {
                let v = serde_json::to_value(&info)?;
                if let serde_json::Value::Object(m) = v {
                    for (k, v) in m {
                        let s = match v {
                            serde_json::Value::Null => "-".to_string(),
                            serde_json::Value::String(s) => s,
                            serde_json::Value::Array(a) if a.is_empty() => "-".to_string(),
                            serde_json::Value::Object(o) if o.is_empty() => "-".to_string(),
                            other => other.to_string(),
                        };
                        writeln!(out, "{k}: {s}")?;
                    }
                }
            }
        }
        Command::Images { quiet, all } => {
            let mut images = storage.list_images()?;
            if !*all {
                let hidden = storage.intermediate_image_ids()?;
                images.retain(|i| !hidden.contains(i.id()));
            }
            if *quiet {
                for i in &images {
                    writeln!(out, "{}", i.id())?;
                }
            } else if format == Format::Json {
                let v: Vec<ImageSummary> = images.iter().map(ImageSummary::new).collect();
                fmt::json(&mut out, &v)?;
            } else {
                let mut rows = Vec::new();
                for i in &images {
                    let created = human_ago(i.created());
                    let size = human_size(i.size());
                    let mut named = false;
                    for n in i.names() {
                        let (repo, tag) = split_name(n);
                        rows.push(vec![
                            repo,
                            tag,
                            short_id(i.id()).to_string(),
                            created.clone(),
                            size.clone(),
                        ]);
                        named = true;
                    }
                    if !named {
                        rows.push(vec![
                            "<none>".into(),
                            "<none>".into(),
                            short_id(i.id()).to_string(),
                            created,
                            size,
                        ]);
                    }
                }
                table(
                    &mut out,
                    &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
                    &rows,
                )?;
            }
        }
        Command::Image(ImageCommand::Export {
            images,
            output,
            compress,
            level,
            jobs,
        }) => {
            let archive = cli
                .format
                .as_deref()
                .unwrap_or("oci")
                .parse::<composefs_storage::image_export::ArchiveFormat>()
                .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
            export::images(&storage, images, output, archive, *compress, *level, *jobs)?;
        }
        Command::Image(ImageCommand::Inspect { images }) => {
            let mut v = Vec::new();
            for q in images {
                let img = storage.find_image(q)?;
                v.push(ImageDetail::new(&img)?);
            }
            fmt::json(&mut out, &v)?;
        }
        Command::Layers { quiet } => {
            let layers = storage.list_layers()?;
            if *quiet {
                for l in &layers {
                    writeln!(out, "{}", l.id())?;
                }
            } else {
                let users = storage.layer_users()?;
                let summaries: Vec<LayerSummary> = layers
                    .iter()
                    .map(|l| LayerSummary::new(l, users.get(l.id()).cloned().unwrap_or_default()))
                    .collect();
                if format == Format::Json {
                    fmt::json(&mut out, &summaries)?;
                } else {
                    let rows: Vec<Vec<String>> = layers
                        .iter()
                        .zip(&summaries)
                        .map(|(l, s)| {
                            vec![
                                short_id(l.id()).to_string(),
                                l.parent_id().map(short_id).unwrap_or("-").to_string(),
                                s.diff_digest
                                    .as_deref()
                                    .map(|d| d.get(..19).unwrap_or(d))
                                    .unwrap_or("-")
                                    .to_string(),
                                s.diff_size.map(human_size).unwrap_or_else(|| "-".into()),
                                human_ago(l.created()),
                                s.images.len().to_string(),
                            ]
                        })
                        .collect();
                    table(
                        &mut out,
                        &[
                            "LAYER ID",
                            "PARENT",
                            "DIFF DIGEST",
                            "SIZE",
                            "CREATED",
                            "IMAGES",
                        ],
                        &rows,
                    )?;
                }
            }
        }
        Command::Layer(LayerCommand::Export {
            layer,
            image,
            output,
            verify,
        }) => {
            let l = resolve_layer(&storage, layer, image.as_deref())?;
            export::layer(&l, output.as_deref(), *verify)?;
        }
        Command::Layer(LayerCommand::Ls { layer, image, long }) => {
            let l = resolve_layer(&storage, layer, image.as_deref())?;
            ls::layer(&l, &mut out, *long, format == Format::Json)?;
        }
        Command::Layer(LayerCommand::Inspect { layers }) => {
            let mut v = Vec::new();
            for q in layers {
                let l = storage.find_layer(q)?;
                v.push(LayerDetail::new(&l)?);
            }
            fmt::json(&mut out, &v)?;
        }
        Command::Verify { images, all, jobs } => {
            let imgs = if *all {
                storage.list_images()?
            } else {
                anyhow::ensure!(!images.is_empty(), "name images to verify, or --all");
                images
                    .iter()
                    .map(|q| storage.find_image(q))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let bad = export::verify(&imgs, *jobs, &mut out, format == Format::Json)?;
            out.flush().context("writing output")?;
            if bad > 0 {
                anyhow::bail!("{bad} of the checks failed");
            }
        }
        Command::Ls {
            image,
            path,
            long,
            recursive,
        } => rootfs::ls(
            &storage,
            image,
            path.as_deref(),
            *long,
            *recursive,
            format == Format::Json,
            &mut out,
        )?,
        Command::Cat { image, paths } => rootfs::cat(&storage, image, paths, &mut out)?,
        Command::Stat { image, path } => {
            rootfs::stat(&storage, image, path, format == Format::Json, &mut out)?
        }
        Command::Diff { image_a, image_b } => {
            rootfs::diff(&storage, image_a, image_b, format == Format::Json, &mut out)?
        }
        Command::Composefs(c) => composefs::run(&storage, c, &mut out)?,
        Command::Containers { quiet } => {
            let ctrs = storage.list_containers()?;
            if *quiet {
                for c in &ctrs {
                    writeln!(out, "{}", c.id)?;
                }
            } else if format == Format::Json {
                let v: Vec<ContainerSummary> = ctrs.iter().map(ContainerSummary::new).collect();
                fmt::json(&mut out, &v)?;
            } else {
                let rows: Vec<Vec<String>> = ctrs
                    .iter()
                    .map(|c| {
                        vec![
                            short_id(&c.id).to_string(),
                            c.names.join(","),
                            c.image.as_deref().map(short_id).unwrap_or("-").to_string(),
                            c.layer.as_deref().map(short_id).unwrap_or("-").to_string(),
                            human_ago(c.created_time()),
                        ]
                    })
                    .collect();
                table(
                    &mut out,
                    &["CONTAINER ID", "NAMES", "IMAGE", "LAYER", "CREATED"],
                    &rows,
                )?;
            }
        }
    }
    out.flush().context("writing output")?;
    // The records are about to be freed by the exit; skip the work.
    std::mem::forget(storage);
    Ok(())
}

/// A layer named directly, or by its index in an image.
fn resolve_layer(
    storage: &Storage,
    layer: &str,
    image: Option<&str>,
) -> Result<composefs_storage::Layer> {
    let Some(image) = image else {
        return Ok(storage.find_layer(layer)?);
    };
    let img = storage.find_image(image)?;
    let layers = img.layers()?;
    if let Ok(i) = layer.parse::<usize>() {
        return layers.get(i).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "image {} has {} layers; there is no layer {i}",
                img.id(),
                layers.len()
            )
        });
    }
    let l = storage.find_layer(layer)?;
    anyhow::ensure!(
        layers.iter().any(|x| x.id() == l.id()),
        "layer {} is not a layer of image {}",
        l.id(),
        img.id()
    );
    Ok(l)
}

/// Splits `repo:tag` / `repo@digest` for the images table.
fn split_name(n: &str) -> (String, String) {
    if let Some((repo, d)) = n.split_once('@') {
        return (repo.to_string(), d.get(..19).unwrap_or(d).to_string());
    }
    let slash = n.rfind('/').map(|i| i + 1).unwrap_or(0);
    match n[slash..].rfind(':') {
        Some(i) => (n[..slash + i].to_string(), n[slash + i + 1..].to_string()),
        None => (n.to_string(), "<none>".to_string()),
    }
}

fn main() {
    // First: this may be the user-namespace helper of a rootless store, re-executed.
    composefs_storage::userns::init();
    let cli = Cli::parse();
    log::set_max_level(cli.log_level);
    let _ = log::set_logger(&LOGGER);
    if let Err(e) = run(cli) {
        // A closed pipe (e.g. `cstorage images | head`) is not an error worth a message.
        let broken_pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                || c.downcast_ref::<serde_json::Error>()
                    .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
        });
        if broken_pipe {
            std::process::exit(0);
        }
        // One line: the error and its causes, each cause only if not already said.
        let mut msg = String::new();
        for c in e.chain() {
            let c = c.to_string();
            if !msg.contains(&c) {
                if !msg.is_empty() {
                    msg.push_str(": ");
                }
                msg.push_str(&c);
            }
        }
        eprintln!("cstorage: error: {}", msg.replace('\n', " "));
        std::process::exit(1);
    }
}
