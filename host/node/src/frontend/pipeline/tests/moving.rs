//! A gear moving to another node: its requests wait before they count as the
//! gear's, then go where its name leads once the move is over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::harness::{App, TestGear, World, get, within};
use crate::frontend::{GearFront, Target, TargetHttps};
use crate::state::GearState;

#[tokio::test]
async fn a_request_for_a_moving_gear_waits_then_goes_where_the_name_leads() {
    let old = App::ok("from the node it left").await;
    let new = App::ok("from its new node").await;
    let world = World::running(&old).await;
    let hold = world.gear.front.hold_for_move();
    let mut client = world.client().await;
    client.send(&get("app-ns.gears.test", "/")).await;
    // held before it counts as the gear's: nothing reached the app, nothing is in flight
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(old.seen().is_empty());
    assert_eq!(
        world
            .gear
            .front
            .active
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // the move is over: the name leads to the gear's new place, then the hold ends
    let logs = tempfile::tempdir().expect("a directory for logs");
    let moved = Arc::new(TestGear {
        front: GearFront::new(logs.path(), 1 << 20, 1, 1),
        state: Mutex::new(GearState::Running),
    });
    let target = Arc::new(Target {
        https: TargetHttps::default(),
        gear: moved,
        label: "app-ns".to_string(),
        port: new.port,
    });
    world
        .node
        .frontend
        .set_gear_routes("app-ns", vec![("app-ns.gears.test".to_string(), target)]);
    drop(hold);
    let answer = within("the held request's answer", client.response(false)).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text(), "from its new node");
    assert!(old.seen().is_empty());
    assert_eq!(new.seen().len(), 1);
}

#[tokio::test]
async fn a_move_that_ends_with_the_gear_in_place_serves_its_held_requests() {
    let app = App::ok("still here").await;
    let world = World::running(&app).await;
    let hold = world.gear.front.hold_for_move();
    let mut client = world.client().await;
    client.send(&get("app-ns.gears.test", "/")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.seen().is_empty());
    drop(hold);
    let answer = within("the held request's answer", client.response(false)).await;
    assert_eq!(
        (answer.status(), answer.text()),
        (200, "still here".to_string())
    );
}
