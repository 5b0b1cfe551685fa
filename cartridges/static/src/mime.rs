//! Content types by file extension for the web's common files, rendered as
//! nginx's `types` block (the gear cannot read the node's /etc/nginx).

/// (content type, extensions), the usual assignments of the IANA registry
/// and of browsers for files a static site ships.
const TYPES: &[(&str, &[&str])] = &[
    ("text/html", &["html", "htm", "shtml"]),
    ("text/css", &["css"]),
    ("text/xml", &["xml"]),
    ("text/plain", &["txt", "text", "log"]),
    ("text/markdown", &["md", "markdown"]),
    ("text/csv", &["csv"]),
    ("text/calendar", &["ics"]),
    ("text/vtt", &["vtt"]),
    ("application/javascript", &["js", "mjs"]),
    ("application/json", &["json", "map"]),
    ("application/manifest+json", &["webmanifest"]),
    ("application/ld+json", &["jsonld"]),
    ("application/atom+xml", &["atom"]),
    ("application/rss+xml", &["rss"]),
    ("application/xhtml+xml", &["xhtml"]),
    ("application/wasm", &["wasm"]),
    ("application/pdf", &["pdf"]),
    ("application/zip", &["zip"]),
    ("application/gzip", &["gz"]),
    ("application/x-tar", &["tar"]),
    (
        "application/octet-stream",
        &["bin", "exe", "dll", "iso", "img"],
    ),
    ("image/png", &["png"]),
    ("image/jpeg", &["jpg", "jpeg"]),
    ("image/gif", &["gif"]),
    ("image/webp", &["webp"]),
    ("image/avif", &["avif"]),
    ("image/svg+xml", &["svg", "svgz"]),
    ("image/x-icon", &["ico"]),
    ("image/bmp", &["bmp"]),
    ("image/tiff", &["tif", "tiff"]),
    ("font/woff", &["woff"]),
    ("font/woff2", &["woff2"]),
    ("font/ttf", &["ttf"]),
    ("font/otf", &["otf"]),
    ("application/vnd.ms-fontobject", &["eot"]),
    ("audio/mpeg", &["mp3"]),
    ("audio/ogg", &["ogg", "oga"]),
    ("audio/wav", &["wav"]),
    ("audio/webm", &["weba"]),
    ("video/mp4", &["mp4", "m4v"]),
    ("video/webm", &["webm"]),
    ("video/ogg", &["ogv"]),
];

/// nginx's `types { ... }` block, indented for the `http` context.
pub fn types_block() -> String {
    let mut block = String::from("    types {\n");
    for (mime, extensions) in TYPES {
        block.push_str(&format!("        {mime} {};\n", extensions.join(" ")));
    }
    block.push_str("    }\n");
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_extension_has_one_type() {
        let mut seen = std::collections::HashSet::new();
        for (_, extensions) in TYPES {
            for ext in *extensions {
                assert!(seen.insert(*ext), "{ext} is listed twice");
            }
        }
    }

    #[test]
    fn block_is_nginx_syntax() {
        let block = types_block();
        assert!(block.starts_with("    types {\n"));
        assert!(block.contains("        text/css css;\n"));
        assert!(block.contains("        image/svg+xml svg svgz;\n"));
        assert!(block.ends_with("    }\n"));
    }
}
