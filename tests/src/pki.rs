//! Certificates for the TLS tests, made with `openssl`.

use std::path::Path;
use std::process::Command;

/// Run `openssl` with `args` in `dir`, or fail the test with its output
/// (the TLS tests make their certificates with it).
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A test CA named `name`, ECDSA P-256, in `dir` (`ca.pem`, `ca.key`),
/// unless one is there already.
pub fn test_ca(dir: &Path, name: &str) {
    if dir.join("ca.pem").exists() {
        return;
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
}

/// A key and a certificate signed by the CA in `dir`, ECDSA P-256:
/// `<stem>.key` and `<stem>.pem` for `names` (IP addresses as IP names, the
/// rest as DNS names; the first is its subject too). Made again, they
/// replace the earlier pair (a renewal).
pub fn test_cert(dir: &Path, stem: &str, names: &[&str]) {
    let (key, csr, pem, ext) = (
        format!("{stem}.key"),
        format!("{stem}.csr"),
        format!("{stem}.pem"),
        format!("{stem}.ext"),
    );
    let san: Vec<String> = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(_) => format!("IP:{n}"),
            Err(_) => format!("DNS:{n}"),
        })
        .collect();
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={}\n", san.join(",")),
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={}", names[0]),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
}

/// A test CA and a certificate it signed for `names`, in `dir`: `ca.pem`
/// (and `ca.key`), and `<stem>.pem` with `<stem>.key` (see [`test_cert`]).
pub fn test_pki(dir: &Path, stem: &str, names: &[&str]) {
    test_ca(dir, "Gearhost test CA");
    test_cert(dir, stem, names);
}
