//! Plain-text tables in the style etcdctl draws with tablewriter: `+---+` borders, centred
//! headers and right-aligned cells.

/// A table under construction: a header row and any number of data rows.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells render empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The finished table, one `\n`-terminated line per border or row.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let border = {
            let mut s = String::from("+");
            for w in &widths {
                s.push_str(&"-".repeat(w + 2));
                s.push('+');
            }
            s.push('\n');
            s
        };
        let line = |cells: &[String], centre: bool| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate().take(cols) {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let gap = w.saturating_sub(width(cell));
                let left = if centre { gap / 2 } else { gap };
                s.push(' ');
                s.push_str(&" ".repeat(left));
                s.push_str(cell);
                s.push_str(&" ".repeat(gap - left));
                s.push_str(" |");
            }
            s.push('\n');
            s
        };
        let mut out = border.clone();
        out.push_str(&line(&self.header, true));
        out.push_str(&border);
        for row in &self.rows {
            out.push_str(&line(row, false));
        }
        out.push_str(&border);
        out
    }

    /// Writes the finished table to `out`.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(self.render().as_bytes())
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_etcdctl_member_table() {
        let mut t = Table::new(&[
            "ID",
            "STATUS",
            "NAME",
            "PEER ADDRS",
            "CLIENT ADDRS",
            "IS LEARNER",
        ]);
        t.row(
            [
                "8e9e05c52164694d",
                "started",
                "default",
                "http://localhost:2380",
                "http://127.0.0.1:23791",
                "false",
            ]
            .map(String::from)
            .to_vec(),
        );
        let want = "\
+------------------+---------+---------+-----------------------+------------------------+------------+
|        ID        | STATUS  |  NAME   |      PEER ADDRS       |      CLIENT ADDRS      | IS LEARNER |
+------------------+---------+---------+-----------------------+------------------------+------------+
| 8e9e05c52164694d | started | default | http://localhost:2380 | http://127.0.0.1:23791 |      false |
+------------------+---------+---------+-----------------------+------------------------+------------+
";
        assert_eq!(t.render(), want);
    }

    #[test]
    fn short_rows_render_empty_cells() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x".into()]);
        assert_eq!(
            t.render(),
            "+---+---+\n| A | B |\n+---+---+\n| x |   |\n+---+---+\n"
        );
    }
}
