//! The helpers' mount namespace template (`warm::hide_from_helpers`): a helper made after it
//! holds none of the mounts below the hidden directory (a node's network namespace pins), and
//! gears still start from it, with their home and binds handed over as descriptors.
//!
//! A test binary of its own: the template is kept for the whole process. Needs root; without it
//! the test prints why and passes as skipped, unless `GEARHOST_REQUIRE_PRIVILEGED=1`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use gearhost_sandbox::{Bind, Sandbox, SandboxSpec, Stdio};

const INIT: &str = env!("CARGO_BIN_EXE_gearhost-init");

fn privileged() -> bool {
    gearhost_sandbox::testing::privileged("the helpers' mount namespace template")
}

/// The waiting helper this process started.
fn warm_helper() -> u32 {
    let found = gearhost_sandbox::testing::helpers_of(std::process::id());
    *found
        .first()
        .expect("a warm helper among this process's children")
}

#[test]
fn helpers_start_without_the_hidden_mounts_and_gears_still_run() {
    if !privileged() {
        return;
    }
    let state = tempfile::Builder::new()
        .prefix("gearhost-template-")
        .tempdir()
        .expect("state dir");
    let state_dir = state.path().canonicalize().expect("canonical");
    // pins as a node keeps them: a private mount with one bound namespace per gear
    let pins = state_dir.join("netns");
    gearhost_sandbox::netns::prepare_pins(&pins).expect("pins");
    for i in 0..20 {
        gearhost_sandbox::netns::create(&pins.join(format!("g{i}"))).expect("pin");
    }
    let home = state_dir.join("gears").join("t");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::write(home.join("hello"), "from the home\n").expect("file");
    std::os::unix::fs::chown(&home, Some(52_950), Some(52_950)).expect("chown");
    let init = PathBuf::from(INIT);

    // without the template, a helper's copy holds every pin
    gearhost_sandbox::keep_warm(&init, 1);
    assert!(gearhost_sandbox::wait_warm(&init, Duration::from_secs(10)));
    let before = gearhost_sandbox::testing::mountinfo_below(warm_helper(), &state_dir)
        .expect("the helper's mount table");
    assert!(
        before.len() > 20,
        "a helper copied from the node holds the pins: {before:?}"
    );
    gearhost_sandbox::keep_warm(&init, 0);

    gearhost_sandbox::warm::hide_from_helpers(std::slice::from_ref(&state_dir)).expect("template");
    gearhost_sandbox::keep_warm(&init, 1);
    assert!(gearhost_sandbox::wait_warm(&init, Duration::from_secs(10)));
    let after = gearhost_sandbox::testing::mountinfo_below(warm_helper(), &state_dir)
        .expect("the helper's mount table");
    assert!(
        after.is_empty(),
        "a helper made from the template holds no mount below the state directory: {after:?}"
    );
    // pins made after the template never reach it
    gearhost_sandbox::netns::create(&pins.join("late")).expect("late pin");

    // a gear starts from that helper, with its home, a bind and its network namespace
    let mut spec = SandboxSpec::new(
        "t",
        52_950,
        52_950,
        &home,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat /gear/hello /opt/extra/hello && cat /proc/self/mountinfo | wc -l".into(),
        ],
    );
    spec.cgroup.subtree = format!("gearhost-test-template-{}", std::process::id());
    spec.init_path = Some(init.clone());
    spec.ro_binds.push(Bind {
        source: home.clone(),
        target: PathBuf::from("/opt/extra"),
    });
    spec.netns = Some(pins.join("late"));
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    spec.stdio.stdout = Stdio::Piped;
    let mut gear = Sandbox::spawn(spec).expect("a gear starts from the template");
    let mut out = String::new();
    gear.take_stdout()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let status = gear.wait().expect("wait");
    gear.teardown().expect("teardown");
    let _ = gearhost_sandbox::cgroup::remove_subtree(&format!(
        "gearhost-test-template-{}",
        std::process::id()
    ));
    gearhost_sandbox::keep_warm(&init, 0);
    assert!(status.success(), "the gear ran: {out}");
    assert!(
        out.starts_with("from the home\nfrom the home\n"),
        "home and bind reached the gear: {out}"
    );
    gearhost_sandbox::netns::remove_pins(&pins).expect("unbind pins");
}
