//! Loyalty: programme configuration as events ([`config`]), the member ledger fold
//! ([`ledger`]), the pure decisions of the policy, the tick and the commands
//! ([`decide`]) and calendar arithmetic ([`time`]). No I/O, no clock.
//!
//! Streams: `loyalty_programme-default` (the programme's versions), `loyalty-<customer
//! id>` (a member's ledger), `loyalty_reward-<id>` (a reward and its claimed stock).

pub mod config;
pub mod decide;
pub mod ledger;
#[cfg(test)]
mod tests;
pub mod time;

pub use config::{Programme, ProgrammeHistory};
pub use decide::RuleError;
pub use ledger::{Balance, Member, Reward};

use crate::domain::events::DomainEvent;

/// Folds one event of the programme stream into the history (`occurred_at_us` is when
/// the version takes effect).
pub fn apply_programme(
    history: &mut ProgrammeHistory,
    position: u64,
    occurred_at_us: i64,
    event: &DomainEvent,
) {
    match event {
        DomainEvent::ProgrammeDefined(e) => {
            history
                .versions
                .push((occurred_at_us, position, e.programme.clone()));
        }
        DomainEvent::ProgrammeChanged(e) => {
            history
                .versions
                .push((occurred_at_us, position, e.programme.clone()));
        }
        _ => {}
    }
}
