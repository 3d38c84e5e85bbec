//! The evcxr display protocol: how a value shows itself inline in a Jupyter notebook run by the
//! evcxr kernel.
//!
//! A type with an inherent `evcxr_display(&self)` method is displayed by evcxr when it is the value
//! of a cell; the method prints blocks `EVCXR_BEGIN_CONTENT <mime>` ... `EVCXR_END_CONTENT` to
//! stdout. evcxr keeps one block per MIME type per cell, shown at the end of the cell.

use base64::Engine;

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
}
