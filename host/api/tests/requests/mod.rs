//! One of every operation, for the golden files.

use gearhost_api::GearRef;
use gearhost_api::ops::*;

pub(crate) fn web() -> GearRef {
    GearRef {
        name: "web".into(),
        namespace: "team".into(),
    }
}

pub(crate) fn db() -> GearRef {
    GearRef {
        name: "db".into(),
        namespace: "team".into(),
    }
}

/// One of every operation.
pub(crate) fn requests() -> Vec<Request> {
    vec![
        Ping {}.into(),
        CartridgeInstall {
            source: "/srv/cartridges/python".into(),
        }
        .into(),
        CartridgePull {
            reference: "registry.example:5000/carts/python:1.4.0".into(),
            insecure: false,
            credentials: Some(RegistryCredentials {
                username: "ops".into(),
                password: "s3cret".into(),
            }),
        }
        .into(),
        CartridgeList {}.into(),
        ImagePull {
            reference: "registry.example/apps/hello:1.0".into(),
            insecure: false,
            credentials: None,
        }
        .into(),
        ImageList {}.into(),
        ImagePrune {}.into(),
        CartridgeRemove {
            name: "python".into(),
        }
        .into(),
        Create {
            gear: web(),
            cartridge: "python".into(),
            disk: Some(2 << 30),
            node: None,
        }
        .into(),
        List {}.into(),
        Show { gear: web() }.into(),
        Destroy { gear: web() }.into(),
        Deploy {
            gear: web(),
            source: "/home/ada/web".into(),
        }
        .into(),
        Snapshot { gear: web() }.into(),
        Move {
            gear: web(),
            node: "node-b".into(),
        }
        .into(),
        Replicate {
            gear: web(),
            id: "6f1c0f2b9a7e4d21".into(),
            owner: None,
        }
        .into(),
        Recover {
            gear: web(),
            id: "6f1c0f2b9a7e4d21".into(),
            from: "node-a".into(),
        }
        .into(),
        Receive {
            gear: web(),
            id: "6f1c0f2b9a7e4d21".into(),
            from: "node-a".into(),
            wake: true,
            start: true,
            owner: Some("ada".into()),
        }
        .into(),
        Restore {
            gear: web(),
            source: "/home/ada/web-20260101-120000.tar.gz".into(),
        }
        .into(),
        DeployImage {
            gear: web(),
            reference: "registry.example/apps/site:2.0".into(),
            insecure: false,
            credentials: Some(RegistryCredentials {
                username: "ada".into(),
                password: "s3cret".into(),
            }),
            port: Some(8000),
        }
        .into(),
        Build { gear: web() }.into(),
        Start { gear: web() }.into(),
        Stop { gear: web() }.into(),
        Restart { gear: web() }.into(),
        Status { gear: web() }.into(),
        Control {
            gear: web(),
            action: "status".into(),
            args: vec!["--verbose".into()],
        }
        .into(),
        Deployments { gear: web() }.into(),
        Rollback {
            gear: web(),
            id: Some(2),
        }
        .into(),
        EnvSet {
            gear: web(),
            vars: vec![("DEBUG".into(), "1".into())],
        }
        .into(),
        EnvUnset {
            gear: web(),
            keys: vec!["DEBUG".into()],
        }
        .into(),
        EnvList { gear: web() }.into(),
        Logs {
            gear: web(),
            lines: 100,
            follow: true,
            hooks: false,
            access: false,
        }
        .into(),
        Link {
            gear: web(),
            to: db(),
        }
        .into(),
        Unlink {
            gear: web(),
            to: db(),
        }
        .into(),
        AliasAdd {
            gear: web(),
            hostname: "www.example.com".into(),
        }
        .into(),
        AliasRemove {
            gear: web(),
            hostname: "www.example.com".into(),
        }
        .into(),
        AliasList { gear: web() }.into(),
        Idle {
            gear: web(),
            stop: true,
        }
        .into(),
        Unidle { gear: web() }.into(),
        Whoami {}.into(),
        NamespaceCreate {
            name: "team".into(),
            members: vec!["ada".into(), "grace".into()],
        }
        .into(),
        NamespaceDelete {
            name: "team".into(),
        }
        .into(),
        NamespaceAddMember {
            name: "team".into(),
            user: "linus".into(),
        }
        .into(),
        NamespaceRemoveMember {
            name: "team".into(),
            user: "linus".into(),
        }
        .into(),
        NamespaceList {}.into(),
        Audit { lines: 50 }.into(),
        Metrics {}.into(),
        AliasAcme {
            gear: web(),
            hostname: "www.example.org".into(),
        }
        .into(),
        HttpsSet {
            gear: web(),
            redirect: Some(true),
            hsts_max_age: Some(31_536_000),
        }
        .into(),
        AliasCert {
            gear: web(),
            hostname: "www.example.org".into(),
            certificate: "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n".into(),
            key: "-----BEGIN PRIVATE KEY-----\nMIGH...\n-----END PRIVATE KEY-----\n".into(),
        }
        .into(),
        NodeStop { gears: true }.into(),
        NodeRestart {}.into(),
        NodeResume {}.into(),
        NodeList {}.into(),
        KeysAdd {
            user: Some("ada".into()),
            key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2cGDeJ0Ojq+X7Z3pJ2vfWcD8r9bZvZ8yQm0d1c4k7L ada@laptop".into(),
        }
        .into(),
        KeysList {
            user: None,
            all: true,
        }
        .into(),
        KeysRemove {
            user: None,
            fingerprint: "SHA256:2P1z0mFJ0bYvG0mB5CJZ0CW3C2yWZ8R6cQhF3n8tIxk".into(),
        }
        .into(),
        KeysLookup {
            kind: "ssh-ed25519".into(),
            key: "AAAAC3NzaC1lZDI1NTE5AAAAIE2cGDeJ0Ojq+X7Z3pJ2vfWcD8r9bZvZ8yQm0d1c4k7L".into(),
        }
        .into(),
        GitAccess {
            gear: web(),
            write: true,
        }
        .into(),
        NodeEvents {
            lines: 20,
            follow: true,
            gear: Some(web()),
        }
        .into(),
        DeployCancel {
            gear: web(),
            deployment: Some(4),
        }
        .into(),
        Exec {
            gear: web(),
            argv: vec!["python".into(), "manage.py".into(), "migrate".into()],
        }
        .into(),
    ]
}
