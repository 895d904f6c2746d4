//! `cstorage`: read containers-storage (podman/buildah/skopeo/CRI-O) stores.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod alloc;
mod args;
mod composefs;
mod df;
mod export;
mod fmt;
mod listing;
mod ls;
mod podman;
mod rootfs;
mod template;
mod unpack;
mod views;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use composefs_storage::{Storage, StorageConfig, StorageError};

use crate::args::{CompressArg, ExportFormat, VerifyArg};
use crate::template::Format;

/// The version and, when built from a git checkout, the commit (set by build.rs).
const VERSION: &str = env!("CSTORAGE_VERSION");

/// Read containers-storage (podman, buildah, skopeo, CRI-O) image stores without Go, a daemon,
/// root or a mount.
#[derive(Parser, Debug)]
#[command(name = "cstorage", version = VERSION, about, max_term_width = 100)]
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
    /// Output format: table, json, or a Go template as podman takes it (`{{.ID}}`,
    /// `table {{.Repository}}\t{{.Tag}}`; for images, layers, containers, image inspect and
    /// layer inspect); for `image export`: oci, oci-archive,
    /// docker-archive or rootfs-tar.
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
        /// Filter as podman does (repeatable; the same key repeated: any matches, different
        /// keys: all match, labels: all match): reference=PATTERN, dangling=BOOL,
        /// intermediate=BOOL, label=KEY[=VALUE], label!=KEY[=VALUE], before=IMAGE,
        /// since=IMAGE, id=PREFIX, readonly=BOOL, until=TIME|DURATION.
        #[arg(short, long, value_name = "FILTER")]
        filter: Vec<String>,
    },
    /// Image commands.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on standard
    /// output, e.g. `cstorage completions bash > /etc/bash_completion.d/cstorage`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on standard output: `cstorage man | man -l -`.
    Man,
    /// Show disk usage as `podman system df` does (images, containers, layers), from the
    /// records (only container layers, which record no size, are walked).
    Df {
        /// Per image (size, shared and unique bytes, containers) and per container.
        #[arg(short, long)]
        verbose: bool,
    },
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
        /// Also compare each layer's files with its tar headers: paths, types, modes,
        /// owners, sizes, symlink targets, devices, xattrs.
        #[arg(long)]
        metadata: bool,
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
    /// Write an image's merged root filesystem into a new or empty directory, as
    /// `umoci unpack` lays it out (owners kept as root; as another user recorded in the
    /// `user.rootlesscontainers` xattr, as `umoci unpack --rootless` does).
    Unpack {
        /// Image ID, ID prefix, name, reference or digest.
        image: String,
        /// The directory to write (created if missing; must be empty if present).
        dir: PathBuf,
        #[command(flatten)]
        write: UnpackArgs,
        /// As root: shift the image's UIDs by CONTAINER:HOST:SIZE ranges (repeatable), as
        /// `umoci unpack --uid-map`; an owner outside every range is an error.
        #[arg(long, value_name = "C:H:S", value_parser = unpack::parse_id_map)]
        uid_map: Vec<composefs_storage::IdMapping>,
        /// As --uid-map, for GIDs.
        #[arg(long, value_name = "C:H:S", value_parser = unpack::parse_id_map)]
        gid_map: Vec<composefs_storage::IdMapping>,
    },
    /// Copy a file, symlink or directory tree out of an image (`podman cp` rules for
    /// trailing slashes and existing destinations; DEST `-` writes a tar to standard output).
    Cp {
        /// IMAGE:PATH (symlinks before the last component are followed inside the image).
        src: String,
        /// Destination path on the host, or `-`.
        dest: PathBuf,
        #[command(flatten)]
        write: UnpackArgs,
    },
    /// List containers.
    Containers {
        /// Print only container IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Serve the store as a read-only OCI registry (pull only) until SIGINT/SIGTERM.
    Serve(cstorage_serve::ServeArgs),
}

/// Options of `unpack` and `cp`.
#[derive(clap::Args, Debug)]
struct UnpackArgs {
    /// Threads writing files (default: number of CPUs).
    #[arg(long, default_value_t = 0, value_name = "N")]
    jobs: usize,
    /// Leave every file owned by the caller and record no owner (`cp` always does).
    #[arg(long)]
    no_owners: bool,
    /// Do not check each file's size and CRC-64 against its layer's tar-split.
    #[arg(long)]
    no_verify: bool,
}

impl UnpackArgs {
    fn opts(&self) -> unpack::WriteOpts {
        unpack::WriteOpts {
            jobs: self.jobs,
            no_owners: self.no_owners,
            no_verify: self.no_verify,
            uid_map: Vec::new(),
            gid_map: Vec::new(),
        }
    }
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
        /// Output: a directory for `oci` (new, empty, or an OCI layout to add to); for
        /// archives a file (replaced when complete), a FIFO or device, or `-` for standard
        /// output.
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
        /// Layer compression for OCI formats: none, gzip or zstd.
        #[arg(long, value_enum, default_value_t = CompressArg::None, value_name = "ALGO")]
        compress: CompressArg,
        /// Compression level (gzip 0-9, default 1; zstd 1-22, default 3).
        #[arg(long, value_name = "N")]
        level: Option<i32>,
        /// Layers exported in parallel (default: number of CPUs).
        #[arg(long, default_value_t = 0, value_name = "N")]
        jobs: usize,
        /// How layers streamed into an archive on standard output, a FIFO or a device are
        /// verified: crc (default: each file's size and CRC-64; the receiver checks the
        /// sha256), digest (also the sha256 of each layer against its diff-digest), none.
        /// Archives written to files are always verified by digest.
        #[arg(long, value_enum, value_name = "MODE")]
        stream_verify: Option<VerifyArg>,
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
        /// Output file (written under a temporary name and renamed over it, keeping its mode
        /// and owner, when complete and verified), FIFO or device; standard output if absent
        /// or `-`.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// What to verify: none, crc (each file's size and CRC-64), digest (also the sha256
        /// of the whole tar against the layer's diff-digest).
        #[arg(long, value_enum, default_value_t = VerifyArg::Crc, value_name = "MODE")]
        verify: VerifyArg,
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
    let format = match &cli.command {
        Command::Image(ImageCommand::Export { .. }) => Format::Table,
        _ => Format::parse(cli.format.as_deref())?,
    };
    let templates_allowed = matches!(
        cli.command,
        Command::Images { .. }
            | Command::Layers { .. }
            | Command::Containers { .. }
            | Command::Image(ImageCommand::Inspect { .. })
            | Command::Layer(LayerCommand::Inspect { .. })
    );
    if matches!(format, Format::Template(_)) && !templates_allowed {
        anyhow::bail!(
            "--format: templates are taken by images, layers, containers, image inspect and layer inspect; this command takes table or json"
        );
    }
    let json = format.is_json();
    // Commands that need no store.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "cstorage", &mut out);
            out.flush().context("writing output")?;
            return Ok(());
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush().context("writing output")?;
            return Ok(());
        }
        _ => {}
    }
    let storage = open_storage(&cli)?;
    match &cli.command {
        Command::Completions { .. } | Command::Man => unreachable!("handled above"),
        Command::Info => listing::info(&storage, &mut out, json)?,
        Command::Images { quiet, all, filter } => {
            listing::images(&storage, &mut out, &format, *quiet, *all, filter)?
        }
        Command::Image(ImageCommand::Export {
            images,
            output,
            compress,
            level,
            jobs,
            stream_verify,
        }) => match ExportFormat::parse(cli.format.as_deref())?.archive() {
            None => unpack::rootfs_tar(&storage, images, output, false)?,
            Some(archive) => export::images(
                &storage,
                images,
                output,
                archive,
                ((*compress).into(), *level, *jobs),
                stream_verify.map(Into::into),
            )?,
        },
        Command::Image(ImageCommand::Inspect { images }) => {
            listing::image_inspect(&storage, &mut out, &format, images)?
        }
        Command::Layers { quiet } => listing::layers(&storage, &mut out, &format, *quiet)?,
        Command::Layer(LayerCommand::Export {
            layer,
            image,
            output,
            verify,
        }) => {
            let l = resolve_layer(&storage, layer, image.as_deref())?;
            export::layer(&l, output.as_deref(), (*verify).into())?;
        }
        Command::Layer(LayerCommand::Ls { layer, image, long }) => {
            let l = resolve_layer(&storage, layer, image.as_deref())?;
            ls::layer(&l, &mut out, *long, json)?;
        }
        Command::Layer(LayerCommand::Inspect { layers }) => {
            listing::layer_inspect(&storage, &mut out, &format, layers)?
        }
        Command::Verify {
            images,
            all,
            jobs,
            metadata,
        } => {
            let imgs = if *all {
                storage.list_images()?
            } else {
                anyhow::ensure!(!images.is_empty(), "name images to verify, or --all");
                images
                    .iter()
                    .map(|q| storage.find_image(q))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let opts =
                composefs_storage::verify::VerifyOptions::new(*jobs).with_metadata(*metadata);
            let bad = export::verify(&imgs, &opts, &mut out, json)?;
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
            json,
            &mut out,
        )?,
        Command::Serve(args) => cstorage_serve::run(storage.clone(), args)?,
        Command::Cat { image, paths } => rootfs::cat(&storage, image, paths, &mut out)?,
        Command::Stat { image, path } => rootfs::stat(&storage, image, path, json, &mut out)?,
        Command::Diff { image_a, image_b } => {
            rootfs::diff(&storage, image_a, image_b, json, &mut out)?
        }
        Command::Composefs(c) => composefs::run(&storage, c, &mut out)?,
        Command::Df { verbose } => df::df(&storage, *verbose, json, &mut out)?,
        Command::Unpack {
            image,
            dir,
            write,
            uid_map,
            gid_map,
        } => {
            let mut o = write.opts();
            o.uid_map = uid_map.clone();
            o.gid_map = gid_map.clone();
            unpack::unpack(&storage, image, dir, &o)?
        }
        Command::Cp { src, dest, write } => unpack::cp(&storage, src, dest, &write.opts())?,
        Command::Containers { quiet } => listing::containers(&storage, &mut out, &format, *quiet)?,
    }
    out.flush().context("writing output")?;
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

/// SIGINT, SIGTERM and SIGHUP remove the temporary and unfinished files of the command
/// (`composefs_storage::output`), then end the process by the signal's default action, so
/// that its parent sees the conventional status (130, 143, 129).
pub(crate) fn remove_temporaries_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            composefs_storage::output::remove_pending();
            let _ = signal_hook::low_level::emulate_default_handler(sig);
            std::process::exit(128 + sig);
        }
    });
}

fn libc_sigpipe() -> i32 {
    signal_hook::consts::SIGPIPE
}

fn main() {
    // First: this may be the user-namespace helper of a rootless store, re-executed.
    composefs_storage::userns::init();
    let cli = Cli::parse();
    // unpack and cp stop their workers on a signal and clean up themselves; serve shuts
    // down gracefully on SIGINT/SIGTERM (and removes its unix socket).
    if !matches!(
        cli.command,
        Command::Unpack { .. } | Command::Cp { .. } | Command::Serve(_)
    ) {
        remove_temporaries_on_signals();
    }
    log::set_max_level(cli.log_level);
    let _ = log::set_logger(&LOGGER);
    if let Err(e) = run(cli) {
        // A closed pipe (e.g. `cstorage images | head`) is not an error worth a message.
        let broken_pipe = e.chain().any(|c| {
            let pipe = |io: &std::io::Error| io.kind() == std::io::ErrorKind::BrokenPipe;
            c.downcast_ref::<std::io::Error>().is_some_and(pipe)
                || c.downcast_ref::<StorageError>()
                    .and_then(StorageError::io_error)
                    .is_some_and(pipe)
                || c.downcast_ref::<serde_json::Error>()
                    .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
        });
        if broken_pipe {
            // What was written is incomplete: fail as a process killed by SIGPIPE does.
            std::process::exit(128 + libc_sigpipe());
        }
        // One line: the error and its causes (each error says its cause once: either in its
        // message or as its source, never both).
        eprintln!("cstorage: error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
