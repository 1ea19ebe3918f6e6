//! The one printer every client command writes through, in etcdctl's `simple`, `json` or
//! `table` format; simple output matches etcdctl byte for byte so scripts keep working.
//!
//! Commands do not teach the printer about their results: each result type implements
//! [`Render`] beside its command (a command file, or a small newtype there when the output
//! depends on a flag), and [`Printer::print`] picks the format.
//!
//! # Layout
//! - this file: [`Format`], [`Render`], [`Printer`], [`Rows`], and durations and byte counts
//!   as Go prints them ([`go_duration`], [`human_bytes`]).
//! - [`json`]: the builder for etcdctl-shaped JSON ([`json::Obj`]) and the response header.
//! - [`table`]: the bordered table renderer.

pub mod json;
pub mod table;

use std::io::{self, Write};
use std::time::Duration;

use anyhow::Result;

use self::table::Table;

/// Output format chosen with `-w/--write-out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// etcdctl's plain text.
    Simple,
    /// The response as JSON, shaped like etcdctl's.
    Json,
    /// Bordered tables (commands without a table print simple text).
    Table,
}

/// A command result that can be printed in every [`Format`].
pub trait Render {
    /// etcdctl's plain text (`-w simple`), every line `\n`-terminated.
    fn simple(&self, out: &mut dyn Write) -> io::Result<()>;

    /// etcdctl's JSON (`-w json`); the printer writes it on one line.
    fn json(&self) -> serde_json::Value;

    /// A bordered table (`-w table`); results without one print their simple text.
    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        self.simple(out)
    }
}

/// Writes command results to `out` in one [`Format`].
pub struct Printer<W: Write = io::Stdout> {
    format: Format,
    out: W,
}

impl<W: Write> Printer<W> {
    /// A printer writing `format` to `out`.
    pub fn new(format: Format, out: W) -> Self {
        Self { format, out }
    }

    /// Gives back the writer (tests read what was printed).
    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Prints one result in the chosen format, then flushes.
    pub fn print<R: Render + ?Sized>(&mut self, r: &R) -> Result<()> {
        match self.format {
            Format::Simple => r.simple(&mut self.out)?,
            Format::Json => writeln!(self.out, "{}", r.json())?,
            Format::Table => r.table(&mut self.out)?,
        }
        self.out.flush()?;
        Ok(())
    }

    /// Prints one line of text whatever the format (etcdctl prints some results only as text).
    pub fn line(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "{text}")?;
        self.out.flush()?;
        Ok(())
    }
}

/// Row-shaped results: simple joins each row's cells with `, ` (as etcdctl), table draws them
/// under `header`.
pub struct Rows<'a> {
    header: &'a [&'a str],
    rows: Vec<Vec<String>>,
}

impl<'a> Rows<'a> {
    /// Rows of cells under these column titles.
    pub fn new(header: &'a [&'a str], rows: Vec<Vec<String>>) -> Self {
        Self { header, rows }
    }

    /// One `a, b, c` line per row.
    pub fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        for r in &self.rows {
            writeln!(out, "{}", r.join(", "))?;
        }
        Ok(())
    }

    /// The rows as a bordered table.
    pub fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut t = Table::new(self.header);
        for r in &self.rows {
            t.row(r.clone());
        }
        t.write_to(out)
    }
}

/// Bytes as text, invalid UTF-8 replaced (table cells, attached lease keys).
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A duration as Go's `time.Duration.String()` prints it (`1.32701ms`, `2m0.5s`).
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", decimal(ns, 3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", decimal(ns, 6));
    }
    let secs = ns / 1_000_000_000;
    let (h, m) = (secs / 3600, (secs / 60) % 60);
    let s = decimal(ns % 60_000_000_000, 9);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// `v / 10^digits` written with the fraction's trailing zeros removed.
fn decimal(v: u128, digits: u32) -> String {
    let unit = 10u128.pow(digits);
    let (int, frac) = (v / unit, v % unit);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// A byte count as go-humanize's `Bytes` prints it (SI units: `20 kB`, `1.2 MB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let mut e = 0usize;
    let mut scale = 1f64;
    while e + 1 < UNITS.len() && (n as f64) >= scale * 1000.0 {
        scale *= 1000.0;
        e += 1;
    }
    let val = ((n as f64) / scale * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

/// What `r` prints in `format` (for the rendering tests beside each command).
#[cfg(test)]
pub fn printed<R: Render + ?Sized>(format: Format, r: &R) -> String {
    let mut p = Printer::new(format, Vec::new());
    assert!(p.print(r).is_ok());
    String::from_utf8_lossy(&p.into_inner()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_nanos(1_327_010)), "1.32701ms");
        assert_eq!(go_duration(Duration::from_nanos(999)), "999ns");
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(120)), "2m0s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn humanized_sizes() {
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(1234567), "1.2 MB");
        assert_eq!(human_bytes(999), "999 B");
    }
}
