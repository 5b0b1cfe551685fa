//! `gear list`, answered without the JSON tree in between: every other answer is made a
//! `serde_json::Value` first ([`crate::api::Reply::answer`]) and then encoded, which for ten
//! thousand gears costs more than building their views. This one is encoded straight from the
//! views, into a line that reads as the same reply (its keys in the order of the views'
//! fields, where the tree sorts them).

use serde::Serialize;

use crate::api::reply::GearView;
use crate::node::Node;
use crate::tenancy::Caller;

/// About how long one gear's view is, encoded (with a URL, without processes).
pub(super) const VIEW_BYTES: usize = 300;

/// The gears `caller` may act on, as views.
pub(super) fn visible(node: &Node, caller: &Caller) -> Vec<GearView> {
    let mut gears = node.list();
    if !caller.operator {
        gears.retain(|g| node.namespaces.may_act(caller, &g.gear.namespace));
    }
    gears
}

/// The `ok` frame of [`crate::api::Reply`], borrowing its answer.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
enum OkLine<'a, T> {
    Ok(&'a T),
}

/// The reply line (with its line feed) that answers with `answer`, about `size` bytes long
/// (the buffer is made that large at once, not grown by copies).
pub(super) fn encode<T: Serialize>(answer: &T, size: usize) -> Vec<u8> {
    let mut line = Vec::with_capacity(size);
    match serde_json::to_writer(&mut line, &OkLine::Ok(answer)) {
        Ok(()) => {
            line.push(b'\n');
            line
        }
        // an answer is strings and numbers: should it fail even so, the usual way says why
        Err(e) => crate::api::Reply::Error(crate::api::ApiError::new(
            crate::api::ErrorKind::Failed,
            format!("the node could not encode its answer: {e}"),
        ))
        .encode(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::reply::{Desired, GearState, GearSummary, Process, ProcessState};
    use crate::api::{Reply, ops};

    #[test]
    fn the_line_reads_as_the_reply_would() {
        let view = |i: u32, processes: Vec<Process>| GearView {
            gear: GearSummary {
                id: format!("{i:016x}"),
                name: format!("g{i}"),
                namespace: "team-a".into(),
                cartridge: "diy".into(),
                uid: 300_000 + i,
                mcs_level: "s0:c1,c2".into(),
                state: GearState::Running,
                desired: Desired::Running,
                active_deployment: Some(3),
                url: i
                    .is_multiple_of(2)
                    .then(|| format!("http://g{i}-team-a.localhost:8080/")),
                takes_deployments: !i.is_multiple_of(3),
                node: (i == 4).then(|| "node-a".to_string()),
            },
            processes,
            failure: (i == 1).then(|| "it \"crashed\"\n".to_string()),
            unchanged: false,
            note: None,
        };
        let app = Process {
            name: "app".into(),
            pid: Some(4242),
            state: ProcessState::Running,
            restarts: 1,
            last_exit: None,
        };
        let gears: Vec<GearView> = (0..5)
            .map(|i| {
                view(
                    i,
                    if i == 2 {
                        vec![app.clone()]
                    } else {
                        Vec::new()
                    },
                )
            })
            .collect();
        for answer in [Vec::new(), gears] {
            let line = encode(&answer, 0);
            let usual = Reply::answer::<ops::List>(&answer).encode();
            assert_eq!(line.last(), Some(&b'\n'));
            // the same reply, read either way
            let read = |line: &[u8]| {
                Reply::decode(std::str::from_utf8(line).expect("utf-8").trim_end())
                    .expect("a reply line")
            };
            assert_eq!(read(&line), read(&usual));
            let Reply::Ok(value) = read(&line) else {
                panic!("an ok line: {line:?}");
            };
            assert_eq!(
                crate::api::decode_answer::<ops::List>(value).expect("views"),
                answer
            );
        }
    }
}
