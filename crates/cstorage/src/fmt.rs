//! Output helpers: tables, human sizes and times, JSON.

use std::io::Write;
use std::time::SystemTime;

/// `4.05kB`-style sizes with three significant digits, decimal units (as podman prints).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s} {}", UNITS[u])
}

/// "3 days ago" (podman's human durations).
pub fn human_ago(t: Option<SystemTime>) -> String {
    let Some(t) = t else { return "unknown".into() };
    let secs = match SystemTime::now().duration_since(t) {
        Ok(d) => d.as_secs(),
        Err(_) => return "in the future".into(),
    };
    let (m, h, d) = (60, 3600, 86400);
    let s = match secs {
        0 => "Less than a second".to_string(),
        1..60 => format!("{secs} seconds"),
        60..120 => "About a minute".to_string(),
        _ if secs < h => format!("{} minutes", secs / m),
        _ if secs < 2 * h - 1 => "About an hour".to_string(),
        _ if secs < 2 * d => format!("{} hours", secs / h),
        _ if secs < 14 * d => format!("{} days", secs / d),
        _ if secs < 60 * d => format!("{} weeks", secs / (7 * d)),
        _ if secs < 730 * d => format!("{} months", secs / (30 * d)),
        _ => format!("{} years", secs / (365 * d)),
    };
    format!("{s} ago")
}

/// RFC 3339 with nanoseconds in UTC, Go's `RFC3339Nano` layout (trailing zeros trimmed).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    let n = d.subsec_nanos();
    if n != 0 {
        let f = format!("{n:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Prints rows as a left-aligned table with a header, columns separated by 3 spaces.
pub fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i < last {
                let pad = widths[i] - c.chars().count() + 3;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(|s| s.as_str()).collect()))?;
    }
    Ok(())
}

/// Prints a value as pretty JSON followed by a newline.
pub fn json(out: &mut impl Write, v: &impl serde::Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)?;
    Ok(())
}

/// A sequence serialized from an iterator, one element at a time (as a JSON array, like a
/// `Vec` of the same elements), so that the whole list never has to be in memory.
pub struct Seq<I>(std::cell::RefCell<Option<I>>);

impl<I> Seq<I> {
    pub fn new(iter: I) -> Self {
        Seq(std::cell::RefCell::new(Some(iter)))
    }
}

impl<I> serde::Serialize for Seq<I>
where
    I: Iterator,
    I::Item: serde::Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let iter = self.0.borrow_mut().take();
        s.collect_seq(iter.into_iter().flatten())
    }
}

/// The first 12 characters of an ID.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(4054), "4.05 kB");
        assert_eq!(human_size(1_000_000), "1 MB");
        assert_eq!(human_size(123_456_789), "123 MB");
        assert_eq!(human_size(12_345_678), "12.3 MB");
    }

    #[test]
    fn times() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1795826049, 643002416);
        assert_eq!(rfc3339(t), "2026-11-28T00:34:09.643002416Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::new(951_782_400, 500_000_000); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.5Z");
    }
}
