//! The agent's TUF client against repositories an attacker (or a careless publisher)
//! shapes: Waveguide's own repository, served over real HTTP on 127.0.0.1, then re-signed
//! with its real keys where the case needs a valid signature. Each case is a defect a
//! client must not have: a role that does not match what the snapshot signed, a role
//! padded past its signed length, a root raising a threshold over a cached timestamp,
//! delegation cycles, role names that are not URL-safe, and a root that expires while
//! the agent runs.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use waveguide::agent::{Trusted, TufClient, TufError};
use waveguide::publish::Batch;
use waveguide_tests::agent::{instruction, Controller};
use waveguide_tests::tuf;

fn batch(ids: &[&str]) -> Batch {
    Batch { upserts: ids.iter().map(|d| instruction(d, "r1", "2.0.0", &[])).collect(), ..Batch::default() }
}

fn client_from(c: &Controller, trusted: Trusted) -> TufClient {
    TufClient::new(reqwest::Client::new(), &c.base.join("tuf/").unwrap(), trusted).unwrap()
}

fn client(c: &Controller) -> TufClient {
    client_from(c, Trusted::from_root(&c.root_bytes()).unwrap())
}

async fn read(client: &mut TufClient, id: &str) -> Result<Option<String>, TufError> {
    Ok(client.instruction(id).await?.map(|v| v.instruction.release))
}

fn online_key(c: &Controller) -> PathBuf {
    c.keys.dir().join("online.pk8")
}

fn root_key(c: &Controller) -> PathBuf {
    c.keys.dir().join("root-keys/root-1.pk8")
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The file of `role` that the published snapshot names.
fn role_file(c: &Controller, role: &str) -> PathBuf {
    let ts = json_file(&c.metadata().join("timestamp.json"));
    let sv = ts["signed"]["meta"]["snapshot.json"]["version"].as_u64().unwrap();
    let snapshot = json_file(&c.metadata().join(format!("{sv}.snapshot.json")));
    let version = snapshot["signed"]["meta"][format!("{role}.json")]["version"].as_u64().unwrap();
    c.metadata().join(format!("{version}.{role}.json"))
}

/// A published repository whose snapshot lists every role's length and hash.
async fn repository_with_lengths() -> Controller {
    let c = Controller::start().await;
    c.publish(batch(&["store-0001", "store-0002"]));
    tuf::resign_snapshot(&c.metadata(), &online_key(&c), tuf::snapshot_with_lengths(&c.metadata())).await;
    assert_eq!(read(&mut client(&c), "store-0001").await.unwrap().as_deref(), Some("r1"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_role_that_does_not_match_the_snapshots_hash() {
    let c = repository_with_lengths().await;
    // Another `targets` at the same version, validly signed with the online key: only the
    // snapshot's hash tells it from the one the snapshot names.
    let path = role_file(&c, "targets");
    let mut other = json_file(&path)["signed"].clone();
    other["expires"] = json!(tuf::in_an_hour().to_string());
    let forged = tuf::sign(&[&online_key(&c)], &other).await;
    std::fs::write(&path, forged).unwrap();
    let err = read(&mut client(&c), "store-0001").await.unwrap_err();
    assert!(matches!(&err, TufError::Mismatch { what, field: "sha256" } if what == "targets"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_no_role_past_its_signed_length() {
    let c = repository_with_lengths().await;
    let leaf = {
        let mut ours = client(&c);
        read(&mut ours, "store-0001").await.unwrap();
        c.take_requests().into_iter().rfind(|p| p.contains(".d-")).unwrap()
    };
    let leaf = c.metadata().join(leaf.rsplit('/').next().unwrap());
    for path in [role_file(&c, "targets"), leaf] {
        let genuine = std::fs::read(&path).unwrap();
        // Whitespace after the JSON keeps the signature valid: only the length catches it.
        let mut padded = genuine.clone();
        padded.extend(std::iter::repeat_n(b' ', 4 << 20));
        std::fs::write(&path, &padded).unwrap();
        let err = read(&mut client(&c), "store-0001").await.unwrap_err();
        assert!(
            matches!(&err, TufError::TooLong { limit, .. } if *limit == genuine.len() as u64),
            "{}: {err}",
            path.display()
        );
        std::fs::write(&path, genuine).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_raising_the_timestamp_threshold_drops_the_cached_timestamp() {
    let c = Controller::start().await;
    c.publish(batch(&["store-0001"]));
    let mut ours = client(&c);
    read(&mut ours, "store-0001").await.unwrap();
    let saved = ours.trusted().clone();

    // Root 2: the same keys, but the timestamp now needs two signatures.
    let mut root = json_file(&c.root_file())["signed"].clone();
    root["version"] = json!(2);
    root["roles"]["timestamp"]["threshold"] = json!(2);
    std::fs::write(c.metadata().join("2.root.json"), tuf::sign(&[&root_key(&c)], &root).await).unwrap();

    // The agent restarts (the root is checked at start): the timestamp it trusts, signed
    // once, no longer meets the threshold.
    let err = read(&mut client_from(&c, saved), "store-0001").await.unwrap_err();
    assert!(matches!(&err, TufError::Signature { role, .. } if role == "timestamp"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_that_expires_while_the_agent_runs_is_refused_at_the_next_update() {
    let c = Controller::start().await;
    c.publish(batch(&["store-0001"]));
    let mut root = json_file(&c.root_file())["signed"].clone();
    root["version"] = json!(2);
    let expires = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 3).unwrap();
    root["expires"] = json!(expires.to_string());
    std::fs::write(c.metadata().join("2.root.json"), tuf::sign(&[&root_key(&c)], &root).await).unwrap();
    let mut ours = client(&c);
    assert_eq!(read(&mut ours, "store-0001").await.unwrap().as_deref(), Some("r1"));
    assert_eq!(ours.trusted().root_version(), 2);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let err = read(&mut ours, "store-0001").await.unwrap_err();
    assert!(matches!(&err, TufError::Expired { role, .. } if role == "root"), "{err}");
}

/// A delegation, to `name`, of `paths`, to the online key.
fn delegation(c: &Controller, name: &str, paths: &[&str], terminating: bool) -> Value {
    let root = json_file(&c.root_file());
    // The online key (the timestamp's) signs `devices` and everything crafted below it.
    let keyid = root["signed"]["roles"]["timestamp"]["keyids"][0].clone();
    json!({"name": name, "keyids": [keyid], "threshold": 1, "paths": paths, "terminating": terminating})
}

/// A targets role `version` 1 listing `targets` and delegating to `roles`, signed with the
/// online key, written as `1.<file name>.json`.
async fn write_role(c: &Controller, file_name: &str, targets: Value, roles: Vec<Value>) {
    let root = json_file(&c.root_file());
    let keyid = root["signed"]["roles"]["timestamp"]["keyids"][0].as_str().unwrap().to_owned();
    let role = json!({
        "_type": "targets", "spec_version": "1.0.0", "version": 1,
        "expires": tuf::in_an_hour().to_string(), "targets": targets,
        "delegations": {"keys": {&keyid: root["signed"]["keys"][&keyid].clone()}, "roles": roles},
    });
    std::fs::write(
        c.metadata().join(format!("1.{file_name}.json")),
        tuf::sign(&[&online_key(c)], &role).await,
    )
    .unwrap();
}

/// Re-signs the published `devices` (the online role above the bins) with `first`
/// delegated before its own delegations, and the snapshot listing `roles` at version 1.
async fn delegate_first(c: &Controller, first: Vec<Value>, roles: &[&str]) {
    let path = role_file(c, "devices");
    let mut targets = json_file(&path)["signed"].clone();
    let delegated = targets["delegations"]["roles"].as_array_mut().unwrap();
    for (i, d) in first.into_iter().enumerate() {
        delegated.insert(i, d);
    }
    std::fs::write(&path, tuf::sign(&[&online_key(c)], &targets).await).unwrap();
    let mut meta = tuf::snapshot_with_lengths(&c.metadata());
    for role in roles {
        meta.insert(format!("{role}.json"), tuf::metafile(b"", 1));
        meta.get_mut(&format!("{role}.json")).unwrap().length = None;
        meta.get_mut(&format!("{role}.json")).unwrap().hashes = None;
    }
    tuf::resign_snapshot(&c.metadata(), &online_key(c), meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cyclic_delegation_graph_visits_each_role_once_and_does_not_panic() {
    let c = Controller::start().await;
    c.publish(batch(&["store-0001"]));
    // devices → a → {devices, a, b}, b → a; then devices' own terminating bins.
    let all = ["devices/*"];
    write_role(
        &c,
        "a",
        json!({}),
        vec![
            delegation(&c, "devices", &all, false),
            delegation(&c, "a", &all, false),
            delegation(&c, "b", &all, false),
        ],
    )
    .await;
    write_role(&c, "b", json!({}), vec![delegation(&c, "a", &all, false)]).await;
    delegate_first(&c, vec![delegation(&c, "a", &all, false)], &["a", "b"]).await;

    let mut ours = client(&c);
    c.take_requests();
    assert_eq!(read(&mut ours, "store-0001").await.unwrap().as_deref(), Some("r1"));
    let fetched = c.take_requests();
    for role in ["targets", "devices", "a", "b"] {
        let n = fetched.iter().filter(|p| p.ends_with(&format!(".{role}.json"))).count();
        assert_eq!(n, 1, "{role} fetched {n} times: {fetched:?}");
    }
    // A second lookup with everything cached fetches no role.
    assert_eq!(read(&mut ours, "store-0001").await.unwrap().as_deref(), Some("r1"));
    assert_eq!(c.take_requests(), ["/tuf/metadata/timestamp.json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_names_are_percent_encoded_in_metadata_urls() {
    let c = Controller::start().await;
    c.publish(batch(&["store-0001"]));
    // A device target listed only in a role whose name is not URL-safe.
    let role = "odd?role#1";
    let doc = serde_json::to_vec(&instruction("odd", "r7", "7.0.0", &[])).unwrap();
    let file = tuf::metafile(&doc, 1);
    let sha = hex::encode(&*file.hashes.as_ref().unwrap().sha256);
    std::fs::write(c.repo().join(format!("targets/devices/{sha}.odd.json")), &doc).unwrap();
    let targets = json!({"devices/odd.json": {"length": doc.len(), "hashes": {"sha256": sha}}});
    write_role(&c, role, targets, vec![]).await;
    delegate_first(&c, vec![delegation(&c, role, &["devices/odd.json"], true)], &[role]).await;

    let mut ours = client(&c);
    c.take_requests();
    assert_eq!(read(&mut ours, "odd").await.unwrap().as_deref(), Some("r7"));
    let fetched = c.take_requests();
    assert!(fetched.contains(&"/tuf/metadata/1.odd%3Frole%231.json".to_owned()), "{fetched:?}");
}
