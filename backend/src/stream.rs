//! The PCM stream state machine (virtio spec 5.14.6.6.1, PCM transitions).
//!
//! ```text
//!            SET_PARAMS        PREPARE          START
//!   Idle ──────────────▶ ParamsSet ─────▶ Prepared ─────▶ Started
//!                          ▲  ▲ │SET_PARAMS ▲ │ ▲PREPARE   │  ▲
//!                          │  └─┘           │ │ └─┘    STOP│  │START
//!                          │   SET_PARAMS   │ │RELEASE     ▼  │
//!                          └────────────── Released ◀──── Stopped
//!                              PREPARE ──────┘      RELEASE
//! ```
//!
//! The spec defines no initial state; like crosvm we start in `Idle`, where
//! only SET_PARAMS is legal (a stream has no parameters to prepare with yet).
//! Every transition Linux sends (sound/virtio/virtio_pcm_ops.c: hw_params is
//! SET_PARAMS, prepare PREPARE, trigger START or STOP, sync_stop RELEASE) is
//! legal here; an illegal one is answered BAD_MSG by the control queue.

use std::fmt;

/// A control command that changes a stream's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcmCommand {
    SetParams,
    Prepare,
    Start,
    Stop,
    Release,
}

impl PcmCommand {
    pub const ALL: [PcmCommand; 5] = [
        PcmCommand::SetParams,
        PcmCommand::Prepare,
        PcmCommand::Start,
        PcmCommand::Stop,
        PcmCommand::Release,
    ];
}

/// The lifecycle state of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcmState {
    /// No parameters yet (after device reset).
    Idle,
    /// Parameters set; nothing allocated on the host.
    ParamsSet,
    /// Host endpoint open; output buffers are held (pre-buffering).
    Prepared,
    /// Running: buffers complete in real time.
    Started,
    /// Paused: buffers are held, the endpoint stays open.
    Stopped,
    /// Host endpoint closed, every buffer returned; parameters kept.
    Released,
}

impl PcmState {
    pub const ALL: [PcmState; 6] = [
        PcmState::Idle,
        PcmState::ParamsSet,
        PcmState::Prepared,
        PcmState::Started,
        PcmState::Stopped,
        PcmState::Released,
    ];

    /// The state `cmd` leads to, or the refused transition.
    pub fn next(self, cmd: PcmCommand) -> Result<PcmState, InvalidTransition> {
        use PcmCommand as C;
        use PcmState as S;
        let to = match (self, cmd) {
            (S::Idle | S::ParamsSet | S::Prepared | S::Released, C::SetParams) => S::ParamsSet,
            (S::ParamsSet | S::Prepared | S::Released, C::Prepare) => S::Prepared,
            (S::Prepared | S::Stopped, C::Start) => S::Started,
            (S::Started, C::Stop) => S::Stopped,
            (S::Prepared | S::Stopped, C::Release) => S::Released,
            (from, cmd) => return Err(InvalidTransition { from, cmd }),
        };
        Ok(to)
    }

    /// Whether I/O messages are accepted (queued) in this state.
    pub fn accepts_io(self) -> bool {
        matches!(
            self,
            PcmState::Prepared | PcmState::Started | PcmState::Stopped
        )
    }
}

impl fmt::Display for PcmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A command that is not legal in the stream's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Invalid transition: {cmd:?} in state {from:?}")]
pub struct InvalidTransition {
    pub from: PcmState,
    pub cmd: PcmCommand,
}

#[cfg(test)]
mod tests {
    use super::*;
    use PcmCommand as C;
    use PcmState as S;

    /// The whole table, state × command: `Some(to)` where legal.
    fn expected(from: S, cmd: C) -> Option<S> {
        match (from, cmd) {
            (S::Idle, C::SetParams) => Some(S::ParamsSet),
            (S::ParamsSet, C::SetParams) => Some(S::ParamsSet),
            (S::ParamsSet, C::Prepare) => Some(S::Prepared),
            (S::Prepared, C::SetParams) => Some(S::ParamsSet),
            (S::Prepared, C::Prepare) => Some(S::Prepared),
            (S::Prepared, C::Start) => Some(S::Started),
            (S::Prepared, C::Release) => Some(S::Released),
            (S::Started, C::Stop) => Some(S::Stopped),
            (S::Stopped, C::Start) => Some(S::Started),
            (S::Stopped, C::Release) => Some(S::Released),
            (S::Released, C::SetParams) => Some(S::ParamsSet),
            (S::Released, C::Prepare) => Some(S::Prepared),
            _ => None,
        }
    }

    #[test]
    fn every_state_command_pair_follows_the_spec_table() {
        let mut legal = 0;
        for from in S::ALL {
            for cmd in C::ALL {
                match (from.next(cmd), expected(from, cmd)) {
                    (Ok(to), Some(want)) => {
                        assert_eq!(to, want, "{from:?} + {cmd:?}");
                        legal += 1;
                    }
                    (Err(e), None) => assert_eq!(e, InvalidTransition { from, cmd }),
                    (got, want) => panic!("{from:?} + {cmd:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(legal, 12);
    }

    #[test]
    fn every_sequence_linux_sends_is_legal() {
        // As Linux's sound/virtio/virtio_pcm_ops.c sends them:
        // open/hw_params/prepare/start/stop/sync_stop, pause/resume,
        // re-prepare after release, close from PREPARE.
        let seqs: &[&[C]] = &[
            &[
                C::SetParams,
                C::SetParams,
                C::Prepare,
                C::Prepare,
                C::Start,
                C::Stop,
                C::Release,
            ],
            &[
                C::SetParams,
                C::Prepare,
                C::Start,
                C::Stop,
                C::Start,
                C::Stop,
                C::Release,
                C::Prepare,
            ],
            &[
                C::SetParams,
                C::Prepare,
                C::SetParams,
                C::Prepare,
                C::Release,
                C::SetParams,
            ],
        ];
        for seq in seqs {
            let mut s = S::Idle;
            for &cmd in *seq {
                s = s.next(cmd).unwrap_or_else(|e| panic!("{seq:?}: {e}"));
            }
        }
    }
}
