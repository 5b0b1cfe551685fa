//! Small apps for each web cartridge, written into temporary source trees
//! for tests to deploy.

/// A source tree made of `(path, contents)`; paths under `.gear/` are made
/// executable (the diy cartridge's scripts).
pub fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, contents) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, contents).expect("write");
        if path.starts_with(".gear/") {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    // the gear's user reads the sources as the client streams them
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Two releases of an app for `cartridge`: what each serves at `/`.
pub fn releases(cartridge: &str) -> [(tempfile::TempDir, &'static str); 2] {
    match cartridge {
        // the first has a public/ directory, the second serves its top: the
        // document root is part of the rendered configuration
        "static" => [
            (tree(&[("public/index.html", "static one\n")]), "static one"),
            (tree(&[("index.html", "static two\n")]), "static two"),
        ],
        // the build writes the page outside the deployment directory, and
        // atomically: a rollback's build runs while the release it replaces
        // still serves that file
        "diy" => {
            let release = |page: &str| {
                tree(&[
                    (
                        ".gear/build",
                        &format!(
                            "#!/bin/sh\nset -eu\nmkdir -p /gear/app-root/runtime/www\n\
                             printf '%s\\n' '{page}' > /gear/app-root/runtime/www/index.html.new\n\
                             mv /gear/app-root/runtime/www/index.html.new /gear/app-root/runtime/www/index.html\n"
                        ),
                    ),
                    (
                        ".gear/start",
                        "#!/bin/sh\nexec python3 -m http.server --bind 127.0.0.1 \
                         --directory /gear/app-root/runtime/www \"$PORT\"\n",
                    ),
                ])
            };
            [
                (release("diy one"), "diy one"),
                (release("diy two"), "diy two"),
            ]
        }
        "python" => {
            let release = |page: &str| {
                tree(&[(
                    "app.py",
                    &format!(
                        "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
                         class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        \
                         body = b'{page}\\n'\n        self.send_response(200)\n        \
                         self.send_header('Content-Length', str(len(body)))\n        \
                         self.end_headers()\n        self.wfile.write(body)\n\
                         HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
                    ),
                )])
            };
            [
                (release("python one"), "python one"),
                (release("python two"), "python two"),
            ]
        }
        "nodejs" => {
            // a package.json without dependencies: the build runs npm, and
            // rebuilding the deployment on rollback finds node_modules in it
            let release = |page: &str| {
                tree(&[
                    (
                        "server.js",
                        &format!(
                            "require('node:http').createServer((q, s) => s.end('{page}\\n'))\
                             .listen(Number(process.env.PORT), '127.0.0.1');\n"
                        ),
                    ),
                    (
                        "package.json",
                        "{\"name\": \"app\", \"version\": \"1.0.0\", \"private\": true}\n",
                    ),
                ])
            };
            [
                (release("nodejs one"), "nodejs one"),
                (release("nodejs two"), "nodejs two"),
            ]
        }
        other => panic!("no releases for {other}"),
    }
}
