//! Two and three replicas of the real `waveguide controller` against a real kube-apiserver,
//! sharing a data directory (a ReadWriteMany volume) and a PostgreSQL inventory, as the
//! chart's production values run them: one Lease per Fleet, a standby that takes over when
//! the holder is killed, and a stopping replica that deletes no Lease it does not hold.

use std::time::Duration;

use serde_json::{json, Value};
use waveguide_tests::fresh_postgres_database;
use waveguide_tests::k8s_scene::{fleet_yaml, Scene};

const MINUTE: Duration = Duration::from_secs(60);

fn lease(scene: &Scene) -> Option<Value> {
    scene.cluster.get(&scene.ns, "lease", "waveguide-fleet-edge")
}

fn holder(scene: &Scene) -> Option<String> {
    lease(scene)?["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

#[test]
fn a_standby_takes_over_and_a_stopping_replica_keeps_its_hands_off_others_leases() {
    let database = tokio::runtime::Runtime::new().unwrap().block_on(fresh_postgres_database());
    let scene = Scene::new("wg-replicas", 2);
    let data = scene.dir.path().join("shared-data");
    let settings = [("WAVEGUIDE_DATABASE_URL", database.as_str()), ("WAVEGUIDE_LEASE_DURATION", "3s")];
    let mut a = scene.controller_over("replica-a", &data, &settings);
    scene.apply(&scene.fleet(json!({})));
    scene.wait_condition("Ready", "True", MINUTE);
    assert_eq!(holder(&scene).as_deref(), Some("replica-a"));
    let b = scene.controller_over("replica-b", &data, &settings);

    // Killed: the Lease expires and the standby takes the fleet over.
    a.signal("KILL");
    a.wait(Duration::from_secs(10));
    scene.wait("replica-b to hold the Lease", MINUTE, || (holder(&scene)? == "replica-b").then_some(()));
    scene.write("fleet.yaml", &fleet_yaml(2, "r3", "auto"));
    let next = scene.commit("r3");
    scene.wait("replica-b to apply the next commit", MINUTE, || {
        (scene.fleet_object()?["status"]["lastAppliedCommit"] == next.as_str()).then_some(())
    });

    // Stopped while it stalls (SIGSTOP) past its Lease: replica-c took the Lease over, and
    // replica-b, told to stop, must not delete it on its way out.
    let mut c = scene.controller_over("replica-c", &data, &settings);
    let mut b = b;
    b.signal("STOP");
    scene.wait("replica-c to hold the Lease", MINUTE, || (holder(&scene)? == "replica-c").then_some(()));
    let taken = lease(&scene).unwrap();
    b.signal("TERM");
    b.signal("CONT");
    assert!(b.wait(Duration::from_secs(30)).success(), "{}", b.log_text());
    let after = lease(&scene).expect("the Lease of replica-c is still there");
    assert_eq!(after["metadata"]["uid"], taken["metadata"]["uid"], "the same Lease, never deleted");
    assert_eq!(after["spec"]["holderIdentity"], "replica-c");

    // The holder stopping releases its Lease at once, for a standby to take over.
    c.signal("TERM");
    assert!(c.wait(Duration::from_secs(30)).success(), "{}", c.log_text());
    assert!(lease(&scene).is_none(), "replica-c released the Lease it held");
}
