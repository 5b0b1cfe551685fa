//! libselinux is linked statically (the workspace turns on `selinux-sys`'s
//! "static" feature: loading it and its pcre2 as shared objects cost every
//! start of every program 0.1-0.2 ms), and a static libselinux needs the PCRE2
//! library it was built against, which `selinux-sys` does not name.

fn main() {
    println!("cargo:rustc-link-lib=static=pcre2-8");
}
