//! The wire format, pinned: every operation and every kind of answer is
//! encoded as the file of its name in `tests/golden/` says, and each file
//! decodes back to the same value. A change to the API that alters what
//! peers see fails here; if it is meant, raise `API_VERSION` and rewrite the
//! files with `GEARHOST_BLESS=1 cargo test -p gearhost-api --test golden`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gearhost_api::ops::*;
use gearhost_api::reply::*;
use gearhost_api::{
    API_VERSION, ApiError, ErrorKind, Event, Op, Reply, Request, decode_request, encode_request,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn golden_dir() -> PathBuf {
    // as cargo says when it runs the test: a test binary built from a checkout elsewhere and
    // found fresh in a shared target directory carries that checkout's path in `env!`
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/golden")
}

fn bless() -> bool {
    std::env::var_os("GEARHOST_BLESS").is_some_and(|v| v == "1")
}

/// Compares `text` with the golden file `name`, or writes it when blessing.
fn check(name: &str, text: &str) {
    let path = golden_dir().join(name);
    if bless() {
        std::fs::write(&path, text).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; write it with GEARHOST_BLESS=1 cargo test -p gearhost-api --test golden",
            path.display()
        )
    });
    assert_eq!(
        text,
        want,
        "{} changed: if that is meant, raise API_VERSION and bless the golden files",
        path.display()
    );
}

mod requests;
use requests::{requests, web};

#[test]
fn every_operation_is_encoded_as_its_golden_file() {
    let requests = requests();
    let mut seen: Vec<&str> = requests.iter().map(Request::name).collect();
    seen.sort_unstable();
    let mut all = Request::NAMES.to_vec();
    all.sort_unstable();
    assert_eq!(seen, all, "every operation has a sample here");
    for request in &requests {
        let line = encode_request(request);
        let text = String::from_utf8(line.clone()).expect("utf-8");
        check(&format!("request-{}.json", request.name()), &text);
        assert_eq!(decode_request(&line).as_ref(), Ok(request));
    }
}

fn gear_summary() -> GearSummary {
    GearSummary {
        id: "f3a9c2d1e0b4".into(),
        name: "web".into(),
        namespace: "team".into(),
        cartridge: "python".into(),
        uid: 5001,
        mcs_level: "s0:c1,c2".into(),
        state: GearState::Running,
        desired: Desired::Running,
        active_deployment: Some(3),
        url: Some("http://web-team.apps.test/".into()),
        takes_deployments: true,
        node: None,
    }
}

fn gear_view() -> GearView {
    GearView {
        gear: gear_summary(),
        processes: vec![Process {
            name: "web".into(),
            pid: Some(4242),
            state: ProcessState::Running,
            restarts: 1,
            last_exit: Some(ExitStatus::Signaled(9)),
        }],
        failure: None,
        unchanged: false,
        note: None,
    }
}

fn deployment() -> Deployment {
    Deployment {
        id: 3,
        created: 1_800_000_000,
        source: "/home/ada/web".into(),
        state: DeploymentState::Ready,
        error: None,
        image: None,
        port: None,
    }
}

fn cartridge() -> CartridgeSummary {
    CartridgeSummary {
        name: "python".into(),
        version: "1.4.0".into(),
        display_name: "Python".into(),
        description: "WSGI apps under gunicorn".into(),
        endpoints: vec![Endpoint {
            name: "http".into(),
            private_port: 8080,
            protocols: vec!["http".into()],
        }],
        actions: vec!["status".into(), "reload".into(), "tidy".into()],
        contract: "0.3.0".into(),
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        origin: Some(CartridgeOrigin {
            reference: "registry.example:5000/carts/python:1.4.0".into(),
            digest: "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
                .into(),
        }),
    }
}

/// Checks one answer of operation `O` against its golden file.
fn answer<O: Op>(file: &str, value: &O::Reply)
where
    O::Reply: PartialEq + std::fmt::Debug,
{
    let Reply::Ok(json) = Reply::answer::<O>(value) else {
        panic!("{file}: the answer encodes");
    };
    let text = serde_json::to_string_pretty(&json).expect("pretty") + "\n";
    check(&format!("answer-{file}.json"), &text);
    let back: O::Reply = gearhost_api::decode_answer::<O>(json).expect("decodes");
    assert_eq!(&back, value, "{file} round-trips");
}

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(file: &str, v: &T) {
    let text = serde_json::to_string(v).expect("encode") + "\n";
    check(file, &text);
    let back: T = serde_json::from_str(&text).expect("decode");
    assert_eq!(&back, v);
}

#[test]
fn every_kind_of_answer_is_encoded_as_its_golden_file() {
    answer::<Ping>(
        "ping",
        &NodeInfo {
            version: "0.1.0".into(),
            api: API_VERSION,
            state_dir: "/var/lib/gearhost".into(),
            domain: "apps.test".into(),
            frontend: Some("0.0.0.0:80".parse().expect("address")),
            metrics: None,
        },
    );
    answer::<CartridgeInstall>("cartridge", &cartridge());
    answer::<ImagePull>(
        "image",
        &ImageSummary {
            reference: "registry.example/apps/hello:1.0".into(),
            digest: "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
                .into(),
            layers: 2,
            command: vec!["/bin/hello".into(), "--port".into(), "8080".into()],
            ports: vec!["8080/tcp".into()],
            fetched: 1,
            shared: 1,
        },
    );
    answer::<ImagePrune>(
        "images-pruned",
        &ImagesPruned {
            images: 1,
            layers: 3,
        },
    );
    answer::<CartridgeRemove>(
        "cartridge-remove",
        &CartridgeRemoved {
            removed: "python".into(),
        },
    );
    answer::<Create>("gear-summary", &gear_summary());
    answer::<Start>("gear-view", &gear_view());
    answer::<Stop>(
        "gear-view-unchanged",
        &GearView {
            gear: GearSummary {
                state: GearState::Stopped,
                desired: Desired::Stopped,
                ..gear_summary()
            },
            processes: Vec::new(),
            failure: None,
            unchanged: true,
            note: Some("gear web is already stopped; nothing was changed".into()),
        },
    );
    answer::<Show>(
        "gear-detail",
        &GearDetail {
            view: gear_view(),
            deployments: vec![deployment()],
            env: vec!["DATABASE_URL".into(), "PORT".into()],
            home: "/var/lib/gearhost/gears/f3a9c2d1e0b4/home".into(),
            links: vec![LinkInfo {
                gear: "db".into(),
                port: 5432,
                env: vec!["DATABASE_URL".into()],
                created: 1_800_000_100,
            }],
            aliases: vec!["www.example.com".into()],
            linked_from: Vec::new(),
            disk: Some(DiskUsage {
                used: 73_400_320,
                limit: 2 << 30,
            }),
            memory: Some(41_943_040),
        },
    );
    answer::<Destroy>(
        "destroyed",
        &Destroyed {
            destroyed: "web-team".into(),
            uid_released: 5001,
        },
    );
    answer::<Deploy>(
        "deployed",
        &Deployed {
            deployment: 3,
            state: GearState::Running,
            url: Some("http://web-team.apps.test/".into()),
        },
    );
    answer::<Snapshot>(
        "snapshotted",
        &Snapshotted {
            gear: "web-team".into(),
            bytes: 48_213,
            entries: 37,
            deployments: vec![2, 3],
            cartridge: Some("dumped 2 databases".into()),
            skipped: vec!["home/app-root/data/app.sock: a socket".into()],
        },
    );
    answer::<Restore>(
        "restored",
        &Restored {
            gear: gear_summary(),
            created: true,
            uid_kept: false,
            archived_uid: 5000,
            entries: 37,
            bytes: 120_448,
            notes: vec!["alias www.example.com leads to another gear; not restored".into()],
        },
    );
    answer::<Move>(
        "moved",
        &Moved {
            gear: gear_summary(),
            from: "node-a".into(),
            to: "node-b".into(),
            bytes: 48_213,
            millis: 2_140,
            notes: Vec::new(),
        },
    );
    answer::<Replicate>(
        "replicated",
        &Replicated {
            gear: "web-team".into(),
            bytes: 48_213,
        },
    );
    answer::<Build>("built", &Built { built: 3 });
    answer::<Control>(
        "control",
        &ControlOutput {
            output: "running, 2 workers".into(),
        },
    );
    answer::<Deployments>(
        "deployments",
        &DeploymentList {
            active: Some(3),
            deployments: vec![
                Deployment {
                    id: 2,
                    state: DeploymentState::Failed,
                    error: Some("build hook failed: pip exited with 1".into()),
                    ..deployment()
                },
                deployment(),
                Deployment {
                    id: 4,
                    source: "registry.example/web:2".into(),
                    image: Some(format!("sha256:{}", "ab".repeat(32))),
                    port: Some(8080),
                    ..deployment()
                },
            ],
        },
    );
    answer::<Rollback>("rolled-back", &RolledBack { active: 2 });
    answer::<EnvSet>(
        "env-set",
        &gearhost_api::reply::EnvChanged {
            note: "restart the gear for running processes to see the change".into(),
        },
    );
    answer::<EnvUnset>(
        "env-unset",
        &gearhost_api::reply::EnvRemoved {
            unset: vec!["DEBUG".into()],
            missing: vec!["DEBUGG".into()],
        },
    );
    let layers = EnvLayers {
        system: BTreeMap::from([("GEAR_PORT".into(), "8080".into())]),
        cartridge: BTreeMap::from([("PYTHON_WSGI_WORKERS".into(), "2".into())]),
        process: BTreeMap::from([
            ("PORT".into(), "8080".into()),
            ("VIRTUAL_ENV".into(), "/gear/venv".into()),
        ]),
        linked: BTreeMap::new(),
        user: BTreeMap::from([("DEBUG".into(), "1".into())]),
    };
    answer::<EnvList>(
        "env-list",
        &gearhost_api::reply::Environment {
            effective: layers
                .system
                .iter()
                .chain(&layers.cartridge)
                .chain(&layers.process)
                .chain(&layers.user)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            layers,
        },
    );
    answer::<Link>(
        "linked",
        &Linked {
            gear: "web".into(),
            to: "db".into(),
            port: 5432,
            env: vec!["DATABASE_URL".into()],
            unchanged: false,
            note: Some("restart web for its running processes to see the new variables".into()),
        },
    );
    answer::<Unlink>(
        "unlinked",
        &Unlinked {
            gear: "web".into(),
            to: "db".into(),
            unchanged: true,
            note: Some("gear web is not linked to db; nothing was changed".into()),
        },
    );
    answer::<AliasAdd>(
        "alias-changed",
        &AliasChanged {
            gear: "web".into(),
            hostname: "www.example.com".into(),
            aliases: vec!["www.example.com".into()],
            unchanged: false,
        },
    );
    answer::<AliasList>(
        "alias-list",
        &gearhost_api::reply::HostNames {
            gear: "web".into(),
            name: "web-team.apps.test".into(),
            aliases: vec!["www.example.com".into(), "shop.example.com".into()],
            tls: vec![
                gearhost_api::reply::AliasTls {
                    hostname: "www.example.com".into(),
                    not_after: Some("2027-03-04T10:00:00Z".into()),
                    acme: false,
                    error: None,
                    next_try: None,
                },
                gearhost_api::reply::AliasTls {
                    hostname: "shop.example.com".into(),
                    not_after: None,
                    acme: true,
                    error: Some("validation of shop.example.com failed".into()),
                    next_try: Some("2026-12-04T10:05:00Z".into()),
                },
            ],
        },
    );
    answer::<Metrics>(
        "metrics",
        &MetricsText {
            text: "# TYPE gearhost_gears gauge\ngearhost_gears{state=\"running\"} 1\n".into(),
        },
    );
    answer::<NodeStop>(
        "node-stopping",
        &NodeStopping {
            gears: true,
            pid: 4242,
        },
    );
    answer::<NodeRestart>(
        "node-restarting",
        &NodeRestarting {
            pid: 4242,
            binary: "/usr/bin/gearhost-node".into(),
        },
    );
    answer::<NodeList>(
        "node-list",
        &vec![
            ClusterNode {
                name: "node-a".into(),
                state: "up".into(),
                this: true,
                listen: Some("10.0.0.1:7701".into()),
                frontend: Some("10.0.0.1:80".into()),
                version: "0.1.0".into(),
                load: Some(NodeLoad {
                    gears: 12,
                    running: 5,
                    memory_total: 25_769_803_776,
                    memory_available: 20_000_000_000,
                }),
            },
            ClusterNode {
                name: "node-b".into(),
                state: "down".into(),
                this: false,
                listen: Some("10.0.0.2:7701".into()),
                frontend: Some("10.0.0.2:80".into()),
                version: "0.1.0".into(),
                load: None,
            },
        ],
    );
    answer::<NodeResume>(
        "resume-outcome",
        &ResumeOutcome {
            done: true,
            started_ms: 1_700_000_000_000,
            took_ms: 180,
            pid: 4242,
            gears: 3,
            adopted: vec!["team-a/web".into()],
            started: vec![ResumeStart {
                gear: "team-a/api".into(),
                why: "pid 812 is gone (it has ended)".into(),
                error: None,
            }],
            not_running: 1,
        },
    );
    let key = KeyInfo {
        user: "ada".into(),
        fingerprint: "SHA256:2P1z0mFJ0bYvG0mB5CJZ0CW3C2yWZ8R6cQhF3n8tIxk".into(),
        kind: "ssh-ed25519".into(),
        bits: 256,
        comment: "ada@laptop".into(),
        added: "2026-12-04T10:00:00.000Z".into(),
    };
    answer::<KeysAdd>("key", &key);
    answer::<HttpsSet>(
        "https-options",
        &GearHttpsOptions {
            redirect: true,
            hsts_max_age: Some(31_536_000),
            without_certificate: vec!["shop.example.org".into()],
        },
    );
    answer::<AliasCert>(
        "alias-certificate",
        &AliasCertificate {
            hostname: "www.example.org".into(),
            not_after: "2027-03-04T10:00:00Z".into(),
            issuer: "CN=Example CA".into(),
        },
    );
    answer::<KeysList>("keys", &vec![key]);
    answer::<KeysLookup>(
        "key-owner",
        &KeyOwner {
            user: Some("ada".into()),
        },
    );
    answer::<GitAccess>(
        "git-repo",
        &GitRepo {
            path: "/var/lib/gearhost/git/f3a9c2d1e0b4.git".into(),
            branch: "main".into(),
        },
    );
    answer::<Exec>("exec-exit", &ExecEnd::Exit(3));
    answer::<Exec>("exec-signal", &ExecEnd::Signal(15));
    answer::<gearhost_api::ops::Logs>("logs-end", &());
    answer::<NodeEvents>("node-events-end", &());
    answer::<DeployCancel>("deploy-cancelled", &DeployCancelled { deployment: 4 });
    answer::<Whoami>(
        "caller",
        &CallerInfo {
            uid: 1001,
            user: "ada".into(),
            operator: false,
            namespaces: vec!["ada".into(), "team".into()],
        },
    );
    answer::<NamespaceCreate>(
        "namespace",
        &NamespaceInfo {
            name: "team".into(),
            kind: NamespaceKind::Team,
            members: vec!["ada".into(), "grace".into()],
            gears: 2,
        },
    );
    answer::<NamespaceDelete>(
        "namespace-deleted",
        &NamespaceDeleted {
            deleted: "team".into(),
        },
    );
    answer::<Audit>(
        "audit",
        &AuditLog {
            entries: vec![
                AuditEntry {
                    time: "2026-12-04T10:00:00.000Z".into(),
                    uid: 1001,
                    user: "ada".into(),
                    namespace: Some("team".into()),
                    gear: Some("web".into()),
                    verb: "deploy".into(),
                    outcome: AuditOutcome::Ok,
                    message: None,
                },
                AuditEntry {
                    time: "2026-12-04T10:00:01.000Z".into(),
                    uid: 1002,
                    user: "bob".into(),
                    namespace: Some("team".into()),
                    gear: Some("web".into()),
                    verb: "destroy".into(),
                    outcome: AuditOutcome::Refused,
                    message: Some("bob may not act in namespace team".into()),
                },
            ],
        },
    );
}

#[test]
fn node_events_are_encoded_as_their_golden_files() {
    // each event travels as the text of an `Event::Line`
    let events = [
        NodeEvent {
            seq: 7,
            time: "2026-12-04T10:00:00.000Z".into(),
            namespace: "team".into(),
            gear: "web".into(),
            kind: NodeEventKind::DeployCancelled,
            reason: "cancelled by `gear deploy web --cancel`".into(),
            deployment: Some(4),
        },
        NodeEvent {
            seq: 8,
            time: "2026-12-04T10:00:01.000Z".into(),
            namespace: "team".into(),
            gear: "web".into(),
            kind: NodeEventKind::Crashed,
            reason: "process app exited with status 3".into(),
            deployment: None,
        },
    ];
    for (event, name) in events
        .iter()
        .zip(["frame-node-event-deploy", "frame-node-event-crash"])
    {
        let text = serde_json::to_string(event).expect("encode") + "\n";
        check(&format!("{name}.json"), &text);
        let back: NodeEvent = serde_json::from_str(&text).expect("decode");
        assert_eq!(&back, event);
    }
}

#[test]
fn the_frame_is_encoded_as_its_golden_files() {
    roundtrip(
        "frame-event-progress.json",
        &Reply::Event(Event::Progress("build: installing requirements".into())),
    );
    roundtrip(
        "frame-event-line.json",
        &Reply::Event(Event::Line("2026-12-04T10:00:00Z web: listening".into())),
    );
    roundtrip(
        "frame-error.json",
        &Reply::Error(ApiError::new(
            ErrorKind::NotFound,
            "no gear web in namespace team; see `gear list`",
        )),
    );
    roundtrip("frame-ok.json", &Reply::Ok(serde_json::json!({"built": 3})));
}

#[test]
fn no_golden_file_is_left_without_a_sample() {
    if bless() {
        return;
    }
    // run after the others have been blessed: every file here is checked by a test above
    let mut names: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("golden directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let requests = requests().len();
    let from_requests = names.iter().filter(|n| n.starts_with("request-")).count();
    assert_eq!(from_requests, requests, "{names:?}");
    for name in &names {
        assert!(
            name.starts_with("request-")
                || name.starts_with("answer-")
                || name.starts_with("frame-"),
            "{name} is not a golden file of any test"
        );
    }
}

#[test]
fn fields_added_later_may_be_absent() {
    // a client from before frozen gears: `gear idle` without `stop` freezes
    let idle = gearhost_api::decode_request(
        br#"{"api":1,"gear":{"name":"web","namespace":"team"},"op":"idle"}"#,
    )
    .expect("an idle without stop");
    assert_eq!(
        idle,
        Request::Idle(Idle {
            gear: web(),
            stop: false
        })
    );
    let line = String::from_utf8(gearhost_api::encode_request(&idle)).expect("utf-8");
    assert!(!line.contains("stop"), "{line}");
    // a client from before disk quotas: the node's default applies
    let request = gearhost_api::decode_request(
        br#"{"api":1,"op":"create","gear":{"name":"web","namespace":"team"},"cartridge":"python"}"#,
    )
    .expect("a create without disk");
    assert_eq!(
        request,
        Request::Create(Create {
            gear: web(),
            cartridge: "python".into(),
            disk: None,
            node: None,
        })
    );
    // and a request without a quota is written as such clients wrote it
    let line = gearhost_api::encode_request(&request);
    assert!(!String::from_utf8_lossy(&line).contains("disk"));
    // a node's answer for a gear without a quota has no disk member
    let detail = GearDetail {
        view: gear_view(),
        deployments: Vec::new(),
        env: Vec::new(),
        home: "/var/lib/gearhost/gears/f3a9c2d1e0b4/home".into(),
        links: Vec::new(),
        aliases: Vec::new(),
        linked_from: Vec::new(),
        disk: None,
        memory: None,
    };
    let text = serde_json::to_string(&detail).expect("encode");
    assert!(!text.contains("disk"), "{text}");
    assert_eq!(
        serde_json::from_str::<GearDetail>(&text).expect("decode"),
        detail
    );
}

#[test]
fn every_gear_state_is_written_as_its_name() {
    for state in [
        GearState::New,
        GearState::Building,
        GearState::Starting,
        GearState::Running,
        GearState::Stopping,
        GearState::Stopped,
        GearState::Failed,
        GearState::Idle,
        GearState::Frozen,
    ] {
        let text = serde_json::to_string(&state).expect("encode");
        assert_eq!(text, format!("\"{}\"", state.as_str()));
        assert_eq!(
            serde_json::from_str::<GearState>(&text).expect("decode"),
            state
        );
    }
    for kind in [NodeEventKind::Froze, NodeEventKind::Thawed] {
        let text = serde_json::to_string(&kind).expect("encode");
        assert_eq!(text, format!("\"{}\"", kind.as_str()));
    }
}
