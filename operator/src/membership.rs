//! Which pods are members: the first step of `pods -> plan`. Pure, from the watched Pod objects.
//!
//! A Ready, Running pod that is not being deleted is an active member. A pod being deleted
//! (`deletionTimestamp` set), or whose node sidecar announced it is leaving (SIGTERM, the `leaving`
//! node event), is draining: it keeps serving while its shards move away, so it is planned out first
//! but stays the source of its moves. Every other pod (Pending, not Ready) is not a member.

use aether_core::plan::{MemberInput, natural_cmp};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeSet;

/// True when the pod's Ready condition is True.
#[must_use]
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The planner's view of the pods, ordered naturally by name.
#[must_use]
pub fn members(pods: &[Pod], leaving: &BTreeSet<String>) -> Vec<MemberInput> {
    let mut out: Vec<MemberInput> = pods
        .iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            if p.metadata.deletion_timestamp.is_some() || (is_ready(p) && leaving.contains(&name)) {
                Some(MemberInput::draining(name))
            } else if is_ready(p) {
                Some(MemberInput::active(name))
            } else {
                None
            }
        })
        .collect();
    out.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    pub(crate) fn mk_pod(name: &str, ready: bool, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                deletion_timestamp: deleting
                    .then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn ready_pods_are_members_and_deleted_ones_drain() {
        let pods = vec![
            mk_pod("app-10", true, false),
            mk_pod("app-2", true, false),
            mk_pod("app-3", false, false),
            mk_pod("app-1", true, true),
        ];
        let m = members(&pods, &BTreeSet::new());
        assert_eq!(
            m,
            vec![
                MemberInput::draining("app-1"),
                MemberInput::active("app-2"),
                MemberInput::active("app-10"),
            ]
        );
        let leaving = BTreeSet::from(["app-2".to_owned(), "app-3".to_owned()]);
        assert_eq!(
            members(&pods, &leaving),
            vec![
                MemberInput::draining("app-1"),
                MemberInput::draining("app-2"),
                MemberInput::active("app-10"),
            ],
            "a Ready pod that announced it is leaving drains; a pod not Ready stays out"
        );
    }
}
