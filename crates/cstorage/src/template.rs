//! `--format` as podman reads it: `table` (the default), `json`, or a Go template (`{{.ID}}`,
//! `table {{.Repository}}\t{{.Tag}}`), executed by the `gotmpl` crate (a port of Go's
//! text/template, with Go's output for maps, lists and missing keys). As in podman
//! (containers/common `report`): `\t` and `\n` typed literally become a tab and a newline, a
//! newline ends each row, `table ` adds a header row (each field's header, `<no value>` for a
//! name that is not a field) and aligns columns like Go's `tabwriter` (minimum width 12,
//! padding 2); `{{json .}}` alone means `json`; the functions `json`, `join`, `lower`, `upper`,
//! `split`, `title`, `truncate` and `pad` are there besides Go's own.

use std::io::Write;

use anyhow::{Context, Result};
use gotmpl::Value;

/// What `--format` asked for.
pub enum Format {
    /// The command's own table.
    Table,
    /// The command's JSON.
    Json,
    /// A Go template.
    Template(Template),
}

/// A parsed `--format` template.
pub struct Template {
    tmpl: gotmpl::Template,
    headers: bool,
}

impl Format {
    /// Parses a `--format` value (`None`: the table).
    pub fn parse(s: Option<&str>) -> Result<Format> {
        let Some(s) = s else {
            return Ok(Format::Table);
        };
        if s == "table" {
            return Ok(Format::Table);
        }
        if is_json(s) {
            return Ok(Format::Json);
        }
        let (headers, body) = match s.strip_prefix("table ") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let mut body = body.replace("\\t", "\t").replace("\\n", "\n");
        if !body.ends_with('\n') {
            body.push('\n');
        }
        let tmpl = funcs(gotmpl::Template::new("format"))
            .parse(&body)
            .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
        Ok(Format::Template(Template { tmpl, headers }))
    }

    /// True for the `json` format.
    pub fn is_json(&self) -> bool {
        matches!(self, Format::Json)
    }
}

/// `json`, or `{{json .}}` with any spaces, as podman's `report.IsJSON`.
fn is_json(s: &str) -> bool {
    let t = s.trim();
    if t == "json" {
        return true;
    }
    let Some(inner) = t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) else {
        return false;
    };
    let mut words = inner.split_whitespace();
    words.next() == Some("json") && words.next() == Some(".") && words.next().is_none()
}

impl Template {
    /// Renders `rows` (objects with the fields a template may name); with `table`, first a
    /// header row from `headers` (field name → header) and aligned columns.
    pub fn render<K: AsRef<str>, V: AsRef<str>>(
        &self,
        out: &mut impl Write,
        headers: &[(K, V)],
        rows: impl IntoIterator<Item = serde_json::Value>,
    ) -> Result<()> {
        let mut text = String::new();
        if self.headers {
            let h: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(k, v)| (k.as_ref().to_string(), serde_json::Value::from(v.as_ref())))
                .collect();
            text.push_str(&self.one(&serde_json::Value::Object(h))?);
        }
        for r in rows {
            let s = self.one(&r)?;
            if self.headers {
                text.push_str(&s);
            } else {
                out.write_all(s.as_bytes())?;
            }
        }
        if self.headers {
            out.write_all(align(&text).as_bytes())?;
        }
        Ok(())
    }

    fn one(&self, row: &serde_json::Value) -> Result<String> {
        let v = gotmpl::to_value(row).context("--format: converting a row")?;
        self.tmpl
            .execute_to_string(&v)
            .map_err(|e| anyhow::anyhow!("--format: {e}"))
    }
}

/// Registers podman's template functions (containers/common `report.DefaultFuncs`).
fn funcs(t: gotmpl::Template) -> gotmpl::Template {
    fn arg(a: &[Value], i: usize) -> String {
        a.get(i).map(|v| v.to_string()).unwrap_or_default()
    }
    fn string(s: impl Into<std::sync::Arc<str>>) -> Value {
        Value::String(s.into())
    }
    t.func("json", |a| {
        let v = a.first().map(to_json).unwrap_or(serde_json::Value::Null);
        Ok(string(serde_json::to_string(&v).unwrap_or_default()))
    })
    .func("lower", |a| Ok(string(arg(a, 0).to_lowercase())))
    .func("upper", |a| Ok(string(arg(a, 0).to_uppercase())))
    .func("title", |a| {
        let s = arg(a, 0);
        let mut out = String::with_capacity(s.len());
        let mut start = true;
        for c in s.chars() {
            if start && c.is_alphabetic() {
                out.extend(c.to_uppercase());
            } else {
                out.push(c);
            }
            start = !c.is_alphanumeric();
        }
        Ok(string(out))
    })
    .func("join", |a| {
        let sep = arg(a, 1);
        let parts: Vec<String> = match a.first() {
            Some(Value::List(l)) => l.iter().map(|v| v.to_string()).collect(),
            Some(v) => vec![v.to_string()],
            None => Vec::new(),
        };
        Ok(string(parts.join(&sep)))
    })
    .func("split", |a| {
        let (s, sep) = (arg(a, 0), arg(a, 1));
        let parts: Vec<Value> = if sep.is_empty() {
            s.chars().map(|c| string(c.to_string())).collect()
        } else {
            s.split(sep.as_str()).map(string).collect()
        };
        Ok(Value::List(parts.into()))
    })
    .func("truncate", |a| {
        let s = arg(a, 0);
        let n = arg(a, 1).parse::<usize>().unwrap_or(usize::MAX);
        Ok(string(s.chars().take(n).collect::<String>()))
    })
    .func("pad", |a| {
        let s = arg(a, 0);
        let (l, r) = (
            arg(a, 1).parse::<usize>().unwrap_or(0),
            arg(a, 2).parse::<usize>().unwrap_or(0),
        );
        Ok(string(format!("{}{s}{}", " ".repeat(l), " ".repeat(r))))
    })
}

/// A template value as JSON (Go's `json.Marshal` of the same data).
fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Uint(u) => (*u).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::String(s) => s.as_ref().into(),
        Value::List(l) => l.iter().map(to_json).collect(),
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| (k.to_string(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        _ => serde_json::Value::Null,
    }
}

/// Aligns tab-terminated cells as Go's `text/tabwriter` with podman's settings (minimum
/// width 12, padding 2, spaces): a column's width is set per block of consecutive lines that
/// have that column; the text after a line's last tab is not aligned.
pub fn align(text: &str) -> String {
    const MIN_WIDTH: usize = 12;
    const PADDING: usize = 2;
    let lines: Vec<Vec<&str>> = text
        .split_inclusive('\n')
        .map(|l| l.split('\t').collect())
        .collect();
    // widths[line][col] for every tab-terminated cell.
    let mut widths: Vec<Vec<usize>> = lines
        .iter()
        .map(|c| vec![0; c.len().saturating_sub(1)])
        .collect();
    fn columns(lines: &[Vec<&str>], widths: &mut [Vec<usize>], from: usize, to: usize, col: usize) {
        let mut i = from;
        while i < to {
            if lines[i].len().saturating_sub(1) <= col {
                i += 1;
                continue;
            }
            let start = i;
            let mut w = 0;
            while i < to && lines[i].len().saturating_sub(1) > col {
                w = w.max(lines[i][col].chars().count());
                i += 1;
            }
            let w = (w + PADDING).max(MIN_WIDTH);
            for row in widths.iter_mut().take(i).skip(start) {
                row[col] = w;
            }
            columns(lines, widths, start, i, col + 1);
        }
    }
    columns(&lines, &mut widths, 0, lines.len(), 0);
    let mut out = String::with_capacity(text.len() * 2);
    for (cells, ws) in lines.iter().zip(&widths) {
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if let Some(w) = ws.get(i) {
                out.extend(std::iter::repeat_n(' ', w - c.chars().count()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms_are_recognised() {
        assert!(is_json("json"));
        assert!(is_json("{{json .}}"));
        assert!(is_json(" {{ json . }} "));
        assert!(!is_json("{{json .Labels}}"));
        assert!(!is_json("table"));
    }

    #[test]
    fn alignment_follows_go_tabwriter() {
        // As podman prints `table {{.ID}}\t{{.Tag}}\t{{.Size}}`.
        let t = "IMAGE ID\tTAG\tSIZE\n277d07b57a44\tlatest\t11.4 kB\n";
        assert_eq!(
            align(t),
            "IMAGE ID      TAG         SIZE\n277d07b57a44  latest      11.4 kB\n"
        );
        // Lines without the column end its block.
        assert_eq!(
            align("a\tb\nc\nd\te\n"),
            "a           b\nc\nd           e\n"
        );
    }

    #[test]
    fn templates_render_like_go() {
        let Format::Template(t) = Format::parse(Some(
            r"{{.ID}}\t{{.Labels}} {{.Names}} {{json .Names}} {{.Nope}}",
        ))
        .unwrap() else {
            panic!()
        };
        let mut out = Vec::new();
        let row =
            serde_json::json!({"ID": "x", "Labels": {"b": "2", "a": "1"}, "Names": ["p", "q"]});
        t.render::<&str, &str>(&mut out, &[], [row]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x\tmap[a:1 b:2] [p q] [\"p\",\"q\"] <no value>\n"
        );
    }
}
