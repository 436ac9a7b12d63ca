//! What the pass does with what operators (or `onFailure: rollback`) asked of a rollout:
//! rollbacks as rollouts of their own, retries of every failed member, accepted failures.
//! The actions go through the same rules as the CLI and the API ([`control::apply`]).

use super::*;
use crate::rollout::control::{self, Action};

impl World {
    /// An operator's action, applied to the stored rollout as the API applies it.
    fn act(&mut self, id: &str, action: Action) {
        let rollout = self.rollout(id).clone();
        let waves = self.waves.get(id).cloned().unwrap_or_default();
        if let Some((changed, waves)) = control::apply(action, &rollout, &waves, self.now_ms).unwrap() {
            self.record(changed, waves);
        }
    }

    /// The publications of a pass: `(rollout, release, attempt, ids sorted)`.
    fn publications(&self, decisions: &[Decision]) -> Vec<(String, String, u32, Vec<String>)> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Publish(p) => {
                    let mut ids: Vec<String> =
                        p.devices.iter().map(|&d| self.fleet.devices()[d as usize].id.to_string()).collect();
                    ids.sort();
                    Some((p.rollout.clone(), self.fleet.release(p.release).name.clone(), p.attempt, ids))
                }
                _ => None,
            })
            .collect()
    }
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn on_failure_rollback_returns_the_changed_devices_through_a_rollback_rollout() {
    let mut w = mk_world("    onFailure: rollback\n");
    w.pass();
    w.report(&["b00"], "v2", UpdateState::Installed, true);
    w.report(&["b01"], "v2", UpdateState::Installed, false);
    let decisions = w.pass();
    assert!(halt_reason(&decisions).is_some());
    let halted = w.rollout("stable-1");
    assert_eq!(halted.phase, RolloutPhase::Halted);
    assert_eq!(halted.requests.rollback_at, Some(w.now_ms));
    assert!(halted.message.as_deref().unwrap().ends_with("rolling back (onFailure: rollback)"));

    // The next pass starts the rollback: the two canaries, back to v1, nothing else.
    w.advance(0.1);
    let decisions = w.pass();
    let Decision::Start { rollout, waves, members } = &decisions[0] else { panic!("{decisions:#?}") };
    assert_eq!(
        (
            rollout.id.as_str(),
            rollout.release.as_str(),
            rollout.version.as_str(),
            rollout.rollback_of.as_deref()
        ),
        ("stable-1-rollback", "v1", "1.0.0", Some("stable-1"))
    );
    assert_eq!(waves.iter().map(|w| (w.name.as_str(), w.size)).collect::<Vec<_>>(), [("canary", 2)]);
    assert_eq!(members.len(), 2);
    assert_eq!(
        w.publications(&decisions),
        [("stable-1-rollback".to_string(), "v1".to_string(), 0, strings(&["b00", "b01"]))]
    );
    let decisions = w.pass();
    assert!(w.publications(&decisions).is_empty(), "asked once, published once");
    assert!(!decisions.iter().any(|d| matches!(d, Decision::Start { .. })), "asked once, started once");

    // The devices return; the rollback's wave bakes and it completes. The original stays
    // halted, and nothing starts it again.
    w.report(&["b00", "b01"], "v1", UpdateState::Installed, true);
    w.pass();
    w.advance(1.1);
    let decisions = w.pass();
    assert!(events(&decisions).contains(&&Event::RolloutCompleted { rollout: "stable-1-rollback".into() }));
    assert_eq!(w.rollout("stable-1").phase, RolloutPhase::Halted);
    w.advance(10.0);
    let decisions = w.pass();
    assert!(w.publications(&decisions).is_empty());
    assert_eq!(w.rollouts.len(), 2);
}

#[test]
fn a_rollback_by_hand_covers_every_published_wave_and_a_newer_rollout_supersedes_it() {
    let (mut w, half) = half_wave_published("");
    w.act("stable-1", Action::Rollback);
    assert_eq!(w.rollout("stable-1").phase, RolloutPhase::Aborted);
    let decisions = w.pass();
    // The rollback's waves follow the original's: the half wave's devices come after the
    // canaries' wave passed.
    let Decision::Start { waves, .. } = &decisions[0] else { panic!("{decisions:#?}") };
    let sizes = waves.iter().map(|w| (w.name.as_str(), w.size)).collect::<Vec<_>>();
    assert_eq!(sizes, [("canary", 2), ("half", half.len() as u64)]);
    assert_eq!(
        w.publications(&decisions),
        [("stable-1-rollback".into(), "v1".into(), 0, strings(&["b00", "b01"]))]
    );

    // Asked again: nothing more. The rollback of a rollback is refused.
    w.act("stable-1", Action::Rollback);
    let decisions = w.pass();
    assert!(w.publications(&decisions).is_empty());
    assert!(!decisions.iter().any(|d| matches!(d, Decision::Start { .. })));
    let rollback = w.rollout("stable-1-rollback").clone();
    assert!(control::apply(Action::Rollback, &rollback, &[], w.now_ms).is_err());

    // The fleet moves the policy on: a new rollout starts, and supersedes the rollback.
    w.fleet = mk_fleet("v3", "", "");
    w.pass();
    assert!(w.rollouts.iter().any(|r| r.id == "stable-2"));
    let decisions = w.pass();
    assert!(decisions
        .iter()
        .any(|d| matches!(d, Decision::Supersede { rollout, .. } if rollout.id == "stable-1-rollback")));
}

#[test]
fn an_operator_retry_republishes_every_failed_member_and_the_halted_rollout_goes_on() {
    let (mut w, half) = half_wave_published("");
    let half: Vec<&str> = half.iter().map(String::as_str).collect();
    w.report(&half[..2], "v1", UpdateState::Failed, true);
    w.report(&half[2..], "v2", UpdateState::Installed, true);
    assert!(halt_reason(&w.pass()).is_some());
    w.advance(5.0);

    w.act("stable-1", Action::Retry);
    assert_eq!(w.rollout("stable-1").phase, RolloutPhase::Progressing);
    let decisions = w.pass();
    assert_eq!(halt_reason(&decisions), None, "the retried devices count as in flight");
    let mut failed = strings(&half[..2]);
    failed.sort();
    assert_eq!(w.publications(&decisions), [("stable-1".into(), "v2".into(), 1, failed)]);
    assert_eq!(w.rollout("stable-1").requests.retry_at, None, "carried out once");
    let decisions = w.pass();
    assert!(w.publications(&decisions).is_empty());

    // The retry works this time: the wave bakes and the last one starts.
    w.report(&half[..2], "v2", UpdateState::Installed, true);
    w.pass();
    w.advance(1.1);
    let published = w.pass_published();
    assert_eq!(published.iter().map(|(wave, _)| *wave).collect::<Vec<_>>(), [2]);
}

#[test]
fn accepted_failures_no_longer_count_and_the_rollout_goes_on() {
    let (mut w, half) = half_wave_published("");
    let half: Vec<&str> = half.iter().map(String::as_str).collect();
    w.report(&half[..1], "v1", UpdateState::Failed, true);
    w.report(&half[1..], "v2", UpdateState::Installed, true);
    assert!(halt_reason(&w.pass()).is_some());

    w.act("stable-1", Action::Accept);
    let decisions = w.pass();
    assert!(decisions.iter().any(|d| matches!(
        d,
        Decision::MembersAccepted { members, .. } if members.iter().map(|m| &**m).eq(half[..1].iter().copied())
    )));
    assert_eq!(halt_reason(&decisions), None);
    assert_eq!(w.rollout("stable-1").waiting, Some(Waiting::Baking));
    assert_eq!(w.rollout("stable-1").requests.accept_at, None);

    // The accepted device stays failed and is not counted again: the wave passes.
    w.advance(1.1);
    let published = w.pass_published();
    assert_eq!(published.iter().map(|(wave, _)| *wave).collect::<Vec<_>>(), [2]);
    let decisions = w.pass();
    assert!(w.publications(&decisions).iter().all(|(_, _, _, ids)| !ids.contains(&half[0].to_string())));
}
