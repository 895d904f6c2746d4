//! `cstorage df`: disk usage as `podman system df` (podman 5) prints it, from the records.

use std::collections::HashSet;
use std::io::Write;

use anyhow::Result;
use composefs_storage::Storage;
use composefs_storage::disk_usage::DiskUsage;
use serde::Serialize;

use crate::fmt::{human_ago, rfc3339, short_id};
use crate::podman::split_name;
use crate::template::align;

/// Go's `%.<prec>g` of a value below 1000 (as go-units formats sizes): `prec` significant
/// digits, trailing zeros dropped.
fn go_g(v: f64, prec: i32) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    let decimals = (prec - 1 - exp).max(0) as usize;
    let mut s = format!("{v:.decimals$}");
    // Rounding may add a digit (999.95 -> 1000.0): fewer decimals then.
    let int_digits = s.split('.').next().map(|p| p.len()).unwrap_or(0) as i32;
    if int_digits > exp + 1 && decimals > 0 {
        s = format!("{v:.prec$}", prec = decimals - 1);
    }
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    s
}

/// go-units `HumanSize`: four significant digits, decimal units, no space (`11.44kB`).
pub fn go_human_size(n: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{}{}", go_g(v, 4), UNITS[u])
}

/// go-units `HumanDuration` (podman's "CREATED" without " ago").
fn duration(t: Option<std::time::SystemTime>) -> String {
    let s = human_ago(t);
    s.strip_suffix(" ago").unwrap_or(&s).to_string()
}

/// `SIZE (PERCENT%)` of the reclaimable part.
fn reclaimable(part: u64, total: u64) -> String {
    let pct = if total > 0 {
        ((part as f64) / (total as f64) * 100.0).round() as u64
    } else {
        0
    };
    format!("{} ({pct}%)", go_human_size(part))
}

#[derive(Serialize)]
struct Summary {
    r#type: &'static str,
    total: usize,
    active: usize,
    size: u64,
    reclaimable: u64,
}

#[derive(Serialize)]
struct ImageRow {
    id: String,
    names: Vec<String>,
    created: Option<String>,
    size: u64,
    shared_size: u64,
    unique_size: u64,
    containers: usize,
}

#[derive(Serialize)]
struct ContainerRow {
    id: String,
    names: Vec<String>,
    image: Option<String>,
    layer: Option<String>,
    created: Option<String>,
    size: Option<u64>,
    mounted: bool,
}

#[derive(Serialize)]
struct Report {
    summary: Vec<Summary>,
    images: Vec<ImageRow>,
    containers: Vec<ContainerRow>,
}

fn summary(du: &DiskUsage) -> Vec<Summary> {
    // Images: one per name, as podman counts; active and reclaimable per image.
    let rows: usize = du.images.iter().map(|i| i.image.names().len().max(1)).sum();
    let mut seen = HashSet::new();
    let (mut active, mut used) = (0, 0u64);
    for i in &du.images {
        if seen.insert(i.image.id().to_string()) && i.containers > 0 {
            active += 1;
            used = used.saturating_add(i.unique_size);
        }
    }
    let ctr_size: u64 = du.containers.iter().filter_map(|c| c.size).sum();
    let ctr_idle: u64 = du
        .containers
        .iter()
        .filter(|c| !c.mounted)
        .filter_map(|c| c.size)
        .sum();
    vec![
        Summary {
            r#type: "Images",
            total: rows,
            active,
            size: du.images_size,
            reclaimable: du.images_size.saturating_sub(used),
        },
        Summary {
            r#type: "Containers",
            total: du.containers.len(),
            active: du.containers.iter().filter(|c| c.mounted).count(),
            size: ctr_size,
            reclaimable: ctr_idle,
        },
        Summary {
            r#type: "Layers",
            total: du.layers,
            active: du.layers - du.unused_layers,
            size: du.layers_size,
            reclaimable: du.unused_layers_size,
        },
    ]
}

/// Prints the disk usage: a summary, with `verbose` per image and per container too.
pub fn df(storage: &Storage, verbose: bool, json: bool, out: &mut impl Write) -> Result<()> {
    let du = storage.disk_usage()?;
    let sums = summary(&du);
    if json {
        let report = Report {
            summary: sums,
            images: du
                .images
                .iter()
                .map(|i| ImageRow {
                    id: i.image.id().to_string(),
                    names: i.image.names().to_vec(),
                    created: i.image.created().map(rfc3339),
                    size: i.size,
                    shared_size: i.shared_size,
                    unique_size: i.unique_size,
                    containers: i.containers,
                })
                .collect(),
            containers: du
                .containers
                .iter()
                .map(|c| ContainerRow {
                    id: c.container.id.clone(),
                    names: c.container.names.clone(),
                    image: c.container.image.clone(),
                    layer: c.container.layer.clone(),
                    created: c.container.created_time().map(rfc3339),
                    size: c.size,
                    mounted: c.mounted,
                })
                .collect(),
        };
        crate::fmt::json(out, &report)?;
        return Ok(());
    }
    if !verbose {
        let mut t = String::from("TYPE\tTOTAL\tACTIVE\tSIZE\tRECLAIMABLE\n");
        for s in &sums {
            t.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\n",
                s.r#type,
                s.total,
                s.active,
                go_human_size(s.size),
                reclaimable(s.reclaimable, s.size)
            ));
        }
        out.write_all(align(&t).as_bytes())?;
        return Ok(());
    }
    writeln!(out, "Images space usage:\n")?;
    let mut t = String::from(
        "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE\tSHARED SIZE\tUNIQUE SIZE\tCONTAINERS\n",
    );
    for i in &du.images {
        let names: Vec<(String, String)> = if i.image.names().is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            i.image.names().iter().map(|n| split_name(n)).collect()
        };
        for (repo, tag) in names {
            t.push_str(&format!(
                "{repo}\t{tag}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                short_id(i.image.id()),
                duration(i.image.created()),
                go_human_size(i.size),
                go_human_size(i.shared_size),
                go_human_size(i.unique_size),
                i.containers
            ));
        }
    }
    out.write_all(align(&t).as_bytes())?;
    writeln!(out, "\nContainers space usage:\n")?;
    let mut t = String::from("CONTAINER ID\tIMAGE\tSIZE\tCREATED\tNAMES\n");
    for c in &du.containers {
        t.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            short_id(&c.container.id),
            c.container.image.as_deref().map(short_id).unwrap_or(""),
            c.size.map(go_human_size).unwrap_or_else(|| "-".into()),
            duration(c.container.created_time()),
            c.container.names.join(",")
        ));
    }
    out.write_all(align(&t).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_go_units() {
        assert_eq!(go_human_size(0), "0B");
        assert_eq!(go_human_size(11436), "11.44kB");
        assert_eq!(go_human_size(22186), "22.19kB");
        assert_eq!(go_human_size(10750), "10.75kB");
        assert_eq!(go_human_size(999), "999B");
        assert_eq!(go_human_size(1_000_000), "1MB");
        assert_eq!(go_human_size(1_279_877_120), "1.28GB");
        assert_eq!(go_human_size(999_950), "1000kB");
    }
}
