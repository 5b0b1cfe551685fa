//! A node that comes back keeps its gears. The failover leader decides from what it read a
//! moment before; a gear's loss is written, and a gear is taken over from its node, only while
//! that node holds no live lease, compared in the same etcd transaction. So a node that
//! returned in between (its liveness key back before it reads its placements) never finds its
//! running gear marked lost or moved away. Real etcd (one member), two nodes' cluster handles;
//! no root needed.

use std::time::Duration;

use gearhost_cluster::{Cluster, JoinOptions, NodeAdvert, Placement};
use gearhost_tests::etcd::EtcdCluster;

async fn join(etcd: &EtcdCluster, name: &str) -> std::sync::Arc<Cluster> {
    let options = JoinOptions {
        endpoints: etcd.endpoints(),
        prefix: "/gearhost-dead-test".into(),
        lease_ttl: Duration::from_secs(30),
        lease_file: None,
    };
    let advert = NodeAdvert {
        name: name.into(),
        listen: "127.0.0.1:1".into(),
        frontend: None,
        version: "test".into(),
        joined: 0,
    };
    Cluster::join(&options, &advert).await.expect("join")
}

#[tokio::test]
async fn a_gear_is_marked_lost_or_taken_over_only_while_its_node_is_gone() {
    let etcd = EtcdCluster::start(1);
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let on_b = Placement {
        id: "0123456789abcdef".into(),
        namespace: "default".into(),
        name: "db".into(),
        label: "db-default".into(),
        uid: 5000,
        node: "b".into(),
        cartridge: "postgresql".into(),
        aliases: Vec::new(),
        replica: None,
        lost: None,
    };
    b.claim_existing(&on_b, None)
        .await
        .expect("b holds the gear");
    let lost = Placement {
        lost: Some("node b died with it".into()),
        ..on_b.clone()
    };
    let on_a = Placement {
        node: "a".into(),
        ..on_b.clone()
    };

    // b lives (as if it came back after a's leader read it gone): nothing changes
    assert!(
        !a.update_placement_of_dead(&lost, "b")
            .await
            .expect("etcd answers"),
        "a live node's gear is not marked lost"
    );
    let refused = a
        .claim_from_dead(&on_a, "b")
        .await
        .expect_err("a live node's gear is not taken over");
    assert!(refused.to_string().contains("node b is back"), "{refused}");
    let now = a.placement(&on_b.id).await.expect("read").expect("placed");
    assert_eq!((now.node.as_str(), now.lost), ("b", None));

    // b gone: its loss is recorded, and the gear can be taken over from it
    b.leave().await;
    assert!(
        a.update_placement_of_dead(&lost, "b")
            .await
            .expect("etcd answers"),
        "a gone node's gear is marked lost"
    );
    let now = a.placement(&on_b.id).await.expect("read").expect("placed");
    assert!(now.lost.is_some(), "{now:?}");
    a.claim_from_dead(&on_a, "b")
        .await
        .expect("taken over from a gone node");
    let now = a.placement(&on_b.id).await.expect("read").expect("placed");
    assert_eq!((now.node.as_str(), now.lost), ("a", None));
}
