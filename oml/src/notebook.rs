//! The evcxr display protocol: how a value shows itself inline in a Jupyter notebook run by the
//! evcxr kernel, and composite reports.
//!
//! A type with an inherent `evcxr_display(&self)` method is displayed by evcxr when it is the value
//! of a cell; the method prints blocks `EVCXR_BEGIN_CONTENT <mime>` ... `EVCXR_END_CONTENT` to
//! stdout. evcxr keeps **one block per MIME type per cell**, shown at the end of the cell: to show
//! several figures and tables from one cell, put them in one [`Report`].
//!
//! Every displayable type of the crate implements [`Show`] (HTML and a one-line plain summary)
//! and has an inherent `evcxr_display`, which prints both `text/html` and `text/plain`.

use base64::Engine;

use crate::Result;

/// Prints one evcxr content block of MIME type `mime`.
pub fn emit(mime: &str, content: &str) {
    println!("EVCXR_BEGIN_CONTENT {mime}\n{content}\nEVCXR_END_CONTENT");
}

/// Prints an HTML block.
pub fn emit_html(html: &str) {
    emit("text/html", html);
}

/// Prints a PNG block (base64-encoded, as evcxr expects).
pub fn emit_png(png: &[u8]) {
    emit("image/png", &base64_png(png));
}

/// Base64 of PNG bytes.
pub fn base64_png(png: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// A `data:` URL for PNG bytes, for `<img src=...>` in HTML.
pub fn png_data_url(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64_png(png))
}

/// Escapes text for HTML (`& < > " '`).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Something that shows itself in a notebook or a report: HTML, and a plain-text summary for
/// terminals and for readers of the notebook file.
pub trait Show {
    /// The HTML fragment (no `<html>` wrapper).
    fn html(&self) -> Result<String>;
    /// A short plain-text summary.
    fn plain(&self) -> String;
}

/// Prints `item` as evcxr content: `text/html` and `text/plain`. A rendering error is shown as
/// text instead (a display never panics and never loses the cell's variables).
pub fn show(item: &dyn Show) {
    match item.html() {
        Ok(html) => Html::new(html, item.plain()).emit(),
        Err(e) => Html::new(
            format!("<pre>{}</pre>", escape_html(&format!("cannot render: {e}"))),
            format!("cannot render: {e}"),
        )
        .emit(),
    }
}

/// Ready HTML with its plain-text summary.
#[derive(Debug, Clone)]
pub struct Html {
    html: String,
    plain: String,
}

impl Html {
    /// `html` shown in notebooks, `plain` where HTML is not rendered.
    pub fn new(html: impl Into<String>, plain: impl Into<String>) -> Self {
        Html {
            html: html.into(),
            plain: plain.into(),
        }
    }

    /// Prints both blocks.
    pub fn emit(&self) {
        emit("text/plain", &self.plain);
        emit_html(&self.html);
    }
}

impl Show for Html {
    fn html(&self) -> Result<String> {
        Ok(self.html.clone())
    }
    fn plain(&self) -> String {
        self.plain.clone()
    }
}

/// A picture (PNG) with a title.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Title (shown above the picture and as its tooltip).
    pub title: String,
    /// PNG bytes.
    pub png: Vec<u8>,
}

impl Figure {
    /// A figure from PNG bytes.
    pub fn new(title: impl Into<String>, png: Vec<u8>) -> Self {
        Figure {
            title: title.into(),
            png,
        }
    }

    /// Writes the PNG.
    pub fn save_png(&self, path: &std::path::Path) -> Result<()> {
        std::fs::write(path, &self.png).map_err(|e| crate::Error::io("cannot write", path, e))
    }

    /// Shows the figure inline (as HTML with its title, and as a plain line).
    pub fn evcxr_display(&self) {
        show(self);
    }
}

impl Show for Figure {
    fn html(&self) -> Result<String> {
        Ok(format!(
            "<figure style=\"display:inline-block;margin:4px\"><img title=\"{t}\" src=\"{}\"/><figcaption style=\"font-size:12px\">{t}</figcaption></figure>",
            png_data_url(&self.png),
            t = escape_html(&self.title)
        ))
    }
    fn plain(&self) -> String {
        format!("[figure: {}]", self.title)
    }
}

/// A table of text cells with a header row.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows (each as long as the header).
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new<S: ToString>(header: &[S]) -> Self {
        Table {
            header: header.iter().map(ToString::to_string).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (cells beyond the header are dropped, missing ones left empty).
    pub fn row<S: ToString>(mut self, cells: &[S]) -> Self {
        let mut r: Vec<String> = cells.iter().map(ToString::to_string).collect();
        r.resize(self.header.len(), String::new());
        self.rows.push(r);
        self
    }

    /// The table as aligned text.
    pub fn to_text(&self) -> String {
        let n = self.header.len();
        let width: Vec<usize> = (0..n)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.header[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&width)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i == 0 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        let mut out = line(&self.header);
        for r in &self.rows {
            out.push('\n');
            out += &line(r);
        }
        out
    }

    /// Shows the table inline.
    pub fn evcxr_display(&self) {
        show(self);
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl Show for Table {
    fn html(&self) -> Result<String> {
        let mut html =
            String::from("<table class=\"oml-table\" style=\"border-collapse:collapse\"><tr>");
        for h in &self.header {
            html += &format!(
                "<th style=\"border-bottom:1px solid #888;padding:2px 10px\">{}</th>",
                escape_html(h)
            );
        }
        html += "</tr>";
        for r in &self.rows {
            html += "<tr>";
            for (i, c) in r.iter().enumerate() {
                let align = if i == 0 { "left" } else { "right" };
                html += &format!(
                    "<td style=\"padding:2px 10px;text-align:{align}\">{}</td>",
                    escape_html(c)
                );
            }
            html += "</tr>";
        }
        Ok(html + "</table>")
    }
    fn plain(&self) -> String {
        self.to_text()
    }
}

/// Several figures, tables and texts shown together: one HTML block, so that one notebook cell
/// can show all of them (evcxr keeps one block per MIME type per cell), or one self-contained
/// HTML file (`report.html`).
#[derive(Debug, Clone, Default)]
pub struct Report {
    title: String,
    parts: Vec<(String, String)>,
}

impl Report {
    /// An empty report with a title (none for `""`).
    pub fn new(title: impl Into<String>) -> Self {
        Report {
            title: title.into(),
            parts: Vec::new(),
        }
    }

    /// Adds a heading.
    pub fn heading(mut self, text: &str) -> Self {
        self.parts.push((
            format!("<h3>{}</h3>", escape_html(text)),
            format!("## {text}"),
        ));
        self
    }

    /// Adds a paragraph of text.
    pub fn text(mut self, text: &str) -> Self {
        self.parts
            .push((format!("<p>{}</p>", escape_html(text)), text.to_owned()));
        self
    }

    /// Adds anything displayable (metrics, grids, figures, tables, histories, models); an item
    /// that cannot be rendered adds its error as text.
    pub fn item(mut self, item: &dyn Show) -> Self {
        let html = item.html().unwrap_or_else(|e| {
            format!("<pre>{}</pre>", escape_html(&format!("cannot render: {e}")))
        });
        self.parts.push((html, item.plain()));
        self
    }

    /// Adds items side by side (each in its own inline block).
    pub fn row(mut self, items: &[&dyn Show]) -> Self {
        let mut html = String::from("<div style=\"display:flex;flex-wrap:wrap;gap:12px\">");
        let mut plain = Vec::new();
        for item in items {
            html += "<div>";
            html += &item.html().unwrap_or_else(|e| {
                format!("<pre>{}</pre>", escape_html(&format!("cannot render: {e}")))
            });
            html += "</div>";
            plain.push(item.plain());
        }
        self.parts.push((html + "</div>", plain.join("\n")));
        self
    }

    /// A whole HTML page (for `report.html`).
    pub fn to_page(&self) -> String {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
             body{{font-family:sans-serif;max-width:1200px;margin:auto}}\
             table{{border-collapse:collapse}}td,th{{padding:2px 8px}}</style></head><body>{}</body></html>",
            escape_html(&self.title),
            self.to_fragment()
        )
    }

    fn to_fragment(&self) -> String {
        let mut html = String::from("<div class=\"oml-report\">");
        if !self.title.is_empty() {
            html += &format!("<h2>{}</h2>", escape_html(&self.title));
        }
        for (h, _) in &self.parts {
            html += h;
        }
        html + "</div>"
    }

    /// Writes [`Report::to_page`] to `path`.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        std::fs::write(path, self.to_page()).map_err(|e| crate::Error::io("cannot write", path, e))
    }

    /// Shows the report inline.
    pub fn evcxr_display(&self) {
        show(self);
    }
}

impl Show for Report {
    fn html(&self) -> Result<String> {
        Ok(self.to_fragment())
    }
    fn plain(&self) -> String {
        let mut lines = Vec::new();
        if !self.title.is_empty() {
            lines.push(format!("# {}", self.title));
        }
        lines.extend(self.parts.iter().map(|(_, p)| p.clone()));
        lines.join("\n")
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.plain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_html("<b>\"a\" & 'b'</b>"),
            "&lt;b&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn a_report_holds_every_part_in_order_escaped() {
        let table = Table::new(&["", "CMC@1"])
            .row(&["raw <pixels>", "0.5"])
            .row(&["after", "0.9"]);
        assert_eq!(
            table.to_text(),
            "              CMC@1\nraw <pixels>    0.5\nafter           0.9"
        );
        let r = Report::new("demo & co")
            .heading("metrics")
            .item(&table)
            .text("done")
            .item(&Figure::new("loss", vec![1, 2, 3]));
        let html = r.html().expect("html");
        let order: Vec<usize> = [
            "demo &amp; co",
            "metrics",
            "raw &lt;pixels&gt;",
            "done",
            "AQID",
        ]
        .iter()
        .map(|s| html.find(s).unwrap_or(usize::MAX))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?} in {html}");
        assert!(r.plain().contains("[figure: loss]"));
        assert!(r.to_page().starts_with("<!doctype html>"));
    }
}
