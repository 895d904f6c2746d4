//! The listing commands: `info`, `images`, `image inspect`, `layers`, `layer inspect` and
//! `containers`, each as table, JSON or a podman-style Go template.

use std::io::Write;

use anyhow::Result;
use composefs_storage::Storage;

use crate::fmt::{self, human_ago, human_size, short_id, table};
use crate::podman;
use crate::template::Format;
use crate::views::{ContainerSummary, ImageDetail, ImageSummary, Info, LayerDetail, LayerSummary};

pub fn info(storage: &Storage, mut out: impl Write, json: bool) -> Result<()> {
    let info = Info::new(storage)?;
    if json {
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
    Ok(())
}

pub fn images(
    storage: &Storage,
    mut out: impl Write,
    format: &Format,
    quiet: bool,
    all: bool,
    filter: &[String],
) -> Result<()> {
    let json = format.is_json();

    let filters = filter
        .iter()
        .map(|f| podman::ImageFilter::parse(f))
        .collect::<Result<Vec<_>>>()?;
    let mut images = storage.list_images()?;
    let ctx = if !filters.is_empty() || matches!(format, Format::Template(_)) {
        Some(podman::ImageContext::new(storage)?)
    } else {
        None
    };
    // Without -a, intermediate images are hidden, unless an intermediate= filter
    // says what to do with them (as podman).
    let intermediate_filter = filters
        .iter()
        .any(|f| matches!(f, podman::ImageFilter::Intermediate(_)));
    if !all && !intermediate_filter {
        match &ctx {
            Some(ctx) => images.retain(|i| !ctx.is_intermediate(i)),
            None => {
                let hidden = storage.intermediate_image_ids()?;
                images.retain(|i| !hidden.contains(i.id()));
            }
        }
    }
    if let Some(ctx) = &ctx {
        images = podman::filter_images(storage, images, &filters, ctx)?;
    }
    if quiet {
        for i in &images {
            writeln!(out, "{}", i.id())?;
        }
    } else if json {
        let v: Vec<ImageSummary> = images.iter().map(ImageSummary::new).collect();
        fmt::json(&mut out, &v)?;
    } else if let (Format::Template(t), Some(ctx)) = (format, &ctx) {
        // podman's order: newest first.
        let mut rows: Vec<(Option<std::time::SystemTime>, serde_json::Value)> = images
            .iter()
            .flat_map(|i| {
                podman::image_rows(i, ctx)
                    .into_iter()
                    .map(move |r| (i.created(), r))
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        t.render(
            &mut out,
            podman::IMAGE_HEADERS,
            rows.into_iter().map(|r| r.1),
        )?;
    } else {
        let mut rows = Vec::new();
        for i in &images {
            let created = human_ago(i.created());
            let size = i.known_size().map(human_size).unwrap_or_else(|| "-".into());
            let mut named = false;
            for n in i.names() {
                let (repo, tag) = podman::split_name(n);
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
    Ok(())
}

pub fn image_inspect(
    storage: &Storage,
    mut out: impl Write,
    format: &Format,
    images: &[String],
) -> Result<()> {
    let mut v = Vec::new();
    let mut imgs = Vec::new();
    for q in images {
        let img = storage.find_image(q)?;
        v.push(ImageDetail::new(&img)?);
        imgs.push(img);
    }
    if let Format::Template(t) = format {
        let parents = storage.image_parents()?;
        let rows = v
            .iter()
            .zip(&imgs)
            .map(|(d, i)| Ok(podman::inspect_row(serde_json::to_value(d)?, i, &parents)))
            .collect::<Result<Vec<_>>>()?;
        let h = podman::headers_with_json(&[], rows.first());
        t.render(&mut out, &h, rows)?;
    } else {
        fmt::json(&mut out, &v)?;
    }
    Ok(())
}

pub fn layers(storage: &Storage, mut out: impl Write, format: &Format, quiet: bool) -> Result<()> {
    let json = format.is_json();

    let layers = storage.list_layers()?;
    if quiet {
        for l in &layers {
            writeln!(out, "{}", l.id())?;
        }
    } else if let Format::Template(t) = format {
        let users = storage.layer_users_index()?;
        let rows = layers
            .iter()
            .map(|l| {
                let s = LayerSummary::new(l, users.image_ids(l.id()).map(String::from).collect());
                Ok(podman::layer_row(serde_json::to_value(s)?, l))
            })
            .collect::<Result<Vec<_>>>()?;
        let h = podman::headers_with_json(podman::LAYER_HEADERS, rows.first());
        t.render(&mut out, &h, rows)?;
    } else {
        if json {
            // One summary at a time: the image lists grow with depth x images.
            let users = storage.layer_users_index()?;
            let each = layers
                .iter()
                .map(|l| LayerSummary::new(l, users.image_ids(l.id()).map(String::from).collect()));
            fmt::json(&mut out, &fmt::Seq::new(each))?;
        } else {
            let counts = storage.layer_user_counts()?;
            let rows: Vec<Vec<String>> = layers
                .iter()
                .map(|l| {
                    vec![
                        short_id(l.id()).to_string(),
                        l.parent_id().map(short_id).unwrap_or("-").to_string(),
                        l.diff_digest()
                            .map(|d| {
                                let d = d.to_string();
                                d.get(..19).unwrap_or(&d).to_string()
                            })
                            .unwrap_or_else(|| "-".into()),
                        l.diff_size().map(human_size).unwrap_or_else(|| "-".into()),
                        human_ago(l.created()),
                        counts.get(l.id()).copied().unwrap_or(0).to_string(),
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
    Ok(())
}

pub fn layer_inspect(
    storage: &Storage,
    mut out: impl Write,
    format: &Format,
    layers: &[String],
) -> Result<()> {
    let mut v = Vec::new();
    let mut ls = Vec::new();
    for q in layers {
        let l = storage.find_layer(q)?;
        v.push(LayerDetail::new(&l)?);
        ls.push(l);
    }
    if let Format::Template(t) = format {
        let rows = v
            .iter()
            .zip(&ls)
            .map(|(d, l)| Ok(podman::layer_row(serde_json::to_value(d)?, l)))
            .collect::<Result<Vec<_>>>()?;
        let h = podman::headers_with_json(podman::LAYER_HEADERS, rows.first());
        t.render(&mut out, &h, rows)?;
    } else {
        fmt::json(&mut out, &v)?;
    }
    Ok(())
}

pub fn containers(
    storage: &Storage,
    mut out: impl Write,
    format: &Format,
    quiet: bool,
) -> Result<()> {
    let json = format.is_json();

    let ctrs = storage.list_containers()?;
    if quiet {
        for c in &ctrs {
            writeln!(out, "{}", c.id)?;
        }
    } else if json {
        let v: Vec<ContainerSummary> = ctrs.iter().map(ContainerSummary::new).collect();
        fmt::json(&mut out, &v)?;
    } else if let Format::Template(t) = format {
        let rows = ctrs
            .iter()
            .map(|c| {
                let s = serde_json::to_value(ContainerSummary::new(c))?;
                Ok(podman::container_row(s, c, storage))
            })
            .collect::<Result<Vec<_>>>()?;
        let h = podman::headers_with_json(podman::CONTAINER_HEADERS, rows.first());
        t.render(&mut out, &h, rows)?;
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
    Ok(())
}
