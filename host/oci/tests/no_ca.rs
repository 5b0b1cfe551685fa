//! A machine without CA certificates: a pull is an error that says what to install, not a
//! panic (the OCI client's own fallback panics, and it would take the node down with it).
//! Its own test binary: the environment that hides the certificates is the process's.

#[test]
#[allow(unsafe_code)]
fn without_ca_certificates_a_pull_is_an_error() {
    let empty = std::env::temp_dir().join(format!("gearhost-no-ca-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("dir");
    // SAFETY: this test binary has this one test; nothing else reads the environment meanwhile.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", empty.join("none.pem"));
        std::env::set_var("SSL_CERT_DIR", &empty);
    }
    let target = gearhost_oci::Target::new("127.0.0.1:9/apps/none:1", true, None).expect("target");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let e = rt
        .block_on(gearhost_oci::resolve_image(&target))
        .expect_err("no registry there");
    let text = e.to_string();
    assert!(
        text.contains("install the system's CA certificates"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}
