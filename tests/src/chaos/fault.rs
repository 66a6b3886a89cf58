//! The kinds of fault the chaos runner injects (`super::inject` carries them out).

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL a node, start it again after a while.
    KillNode,
    /// SIGSTOP a node, SIGCONT it after a while.
    StopNode,
    /// A new plan, then SIGKILL a source of its moves at once.
    KillSourceMidMove,
    /// A new plan, then SIGSTOP a source of its moves at once.
    StopSourceMidMove,
    /// A new plan, then SIGKILL a destination of its moves.
    KillDestinationMidMove,
    /// SIGSTOP a node, then a plan that moves shards away from it, then SIGCONT.
    StopThenReplan,
    /// A nats-server killed and started again (one of the cluster's).
    RestartNats,
    /// A plan with a member added or removed while the previous plan's moves run.
    PlanChange,
    /// A member removed and added back at once.
    Flap,
    /// Every node and every nats-server killed, started again after longer than [`WINDOW`].
    StopAll,
    /// The operator's leader SIGKILLed, started again after a while.
    KillOperator,
    /// The operator's leader SIGSTOPped, SIGCONT after a while.
    StopOperator,
    /// The operator's leader SIGKILLed until the standby takes its Lease.
    OperatorFailover,
}

impl Fault {
    /// Every kind, the operator process's faults too.
    pub const WITH_OPERATOR: [Self; 13] = [
        Self::KillNode,
        Self::StopNode,
        Self::KillSourceMidMove,
        Self::StopSourceMidMove,
        Self::KillDestinationMidMove,
        Self::StopThenReplan,
        Self::RestartNats,
        Self::PlanChange,
        Self::Flap,
        Self::StopAll,
        Self::KillOperator,
        Self::StopOperator,
        Self::OperatorFailover,
    ];

    /// Every kind but the operator process's (a run without one).
    pub const ALL: &'static [Self] = Self::WITH_OPERATOR.split_at(10).0;

    /// Its name in the report.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::KillNode => "node SIGKILL",
            Self::StopNode => "node SIGSTOP",
            Self::KillSourceMidMove => "source SIGKILL mid-move",
            Self::StopSourceMidMove => "source SIGSTOP mid-move",
            Self::KillDestinationMidMove => "destination SIGKILL mid-move",
            Self::StopThenReplan => "owner SIGSTOP, shards moved away",
            Self::RestartNats => "nats-server restart",
            Self::PlanChange => "plan change mid-move",
            Self::Flap => "member flap",
            Self::StopAll => "every process stopped past every window",
            Self::KillOperator => "operator leader SIGKILL",
            Self::StopOperator => "operator leader SIGSTOP",
            Self::OperatorFailover => "operator leader failover",
        }
    }
}
