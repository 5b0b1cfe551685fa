//! Test cartridge that asks the host for what its manifest does not allow.
//! The manifest permits `exec` of `echo` only and no `spawn` at all.
//!
//! - `build` execs `/bin/cat /etc/shadow` and returns the host's refusal as
//!   its hook error (expected code: `permission-denied`);
//! - `start` spawns `sh` and returns the host's refusal likewise;
//! - `control allowed` execs `echo hi`, which the manifest allows, and returns
//!   its standard output (or the host's error, e.g. `unavailable` where no
//!   sandbox exists).
//!
//! Should the host ever grant a forbidden request, the hook fails with code
//! `not-refused`, so no test can mistake that for success.

use gearhost_sdk::prelude::*;

#[derive(Default)]
struct Trespass;

impl Cartridge for Trespass {
    const ACTIONS: &'static [&'static str] = &["allowed"];

    fn build(&self) -> Result<()> {
        match Command::new("/bin/cat").arg("/etc/shadow").output() {
            Ok(out) => Err(Error::new(
                "not-refused",
                format!("the host ran `/bin/cat /etc/shadow` ({})", out.status),
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn start(&self) -> Result<()> {
        match Command::new("sh")
            .args(["-c", "sleep 1000"])
            .spawn("intruder", Restart::Never)
        {
            Ok(pid) => Err(Error::new(
                "not-refused",
                format!("the host spawned `sh` as pid {pid}"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn control(&self, action: &str, _args: &[String]) -> Result<String> {
        match action {
            "allowed" => {
                let out = Command::new("echo").arg("hi").output()?;
                Ok(out.stdout_str().into_owned())
            }
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

gearhost_sdk::export_cartridge!(Trespass);
