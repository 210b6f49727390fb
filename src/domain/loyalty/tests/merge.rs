//! Given/when/then tests of moving a merged duplicate's ledger into its survivor's
//! (`LedgerMerged`): every line keeps its state and times, membership and tier carry
//! over to a survivor that is not a member, debt moves, refunds of the duplicate's orders
//! still cancel the right points, and the move happens once.

use super::*;
use crate::domain::events::LedgerMerged;
use crate::domain::loyalty::Balance;
use crate::limits::{LOYALTY_MERGE_LINES_PER_EVENT, PAYLOAD_BYTES_MAX};

const SURVIVOR: u128 = 8;

fn merge_id() -> Uuid {
    Uuid::from_u128(0xfeed)
}

/// A second world for the survivor (customer 8), under the same programme.
fn survivor_world(programme_version: Programme) -> World {
    let mut w = World::new();
    w.member = Member::new(Uuid::from_u128(SURVIVOR));
    w.define(0, programme_version);
    w
}

/// Folds every part into both ledgers, as the policy's one append does.
fn apply_merge(dup: &mut World, survivor: &mut World, at_us: i64, parts: &[LedgerMerged]) {
    for (i, part) in parts.iter().enumerate() {
        let event = DomainEvent::LedgerMerged(part.clone());
        let env = Envelope {
            position: 10_000 + i as u64,
            event_id: Uuid::from_u128(0xaaaa + i as u128),
            occurred_at_us: at_us,
        };
        ledger::apply(&mut dup.member, &env, &event);
        let env = Envelope {
            position: 20_000 + i as u64,
            event_id: Uuid::from_u128(0xbbbb + i as u128),
            occurred_at_us: at_us,
        };
        ledger::apply(&mut survivor.member, &env, &event);
    }
    // Later events come after the merge in the log.
    dup.position = 30_000;
    survivor.position = 30_000;
}

/// The policy's decision for a merge into `survivor`, under its current programme.
fn decide_merge(
    duplicate: &Member,
    survivor: &World,
) -> Result<Vec<LedgerMerged>, decide::MergeTooLarge> {
    decide::merge_ledger(
        duplicate,
        &survivor.member,
        survivor.programme.current(),
        merge_id(),
    )
}

fn entries_sum(member: &Member) -> i64 {
    member.entries.iter().map(|e| e.points).sum()
}

/// The duplicate of the worked example's shape: 150 points from O1 (100 base + 50 first
/// purchase bonus), 120 of them spent, then O2's 200 points still pending; Silver.
fn duplicate_with_history() -> World {
    let mut w = World::new();
    assert_eq!(w.member.customer_id, Uuid::from_u128(7), "the duplicate");
    w.define(0, programme());
    w.enrol(0);
    w.buy(noon(2024, 1, 1), "O1", &[("x", 1, 10_000)]);
    w.spend(noon(2024, 2, 1), 120).unwrap();
    w.buy(noon(2024, 3, 1), "O2", &[("x", 1, 20_000)]);
    let ticked = w.tick(noon(2024, 3, 2));
    assert!(
        ticked
            .iter()
            .any(|e| matches!(e, DomainEvent::TierChanged(t) if t.to_tier == "Silver")),
        "350 points earned in the window reach Silver"
    );
    w
}

#[test]
fn given_a_member_duplicate_when_merged_into_a_non_member_then_the_ledger_moves_as_it_was() {
    let mut dup = duplicate_with_history();
    let mut survivor = survivor_world(programme());
    let at = noon(2024, 3, 5);
    let before = dup.member.clone();

    let parts = decide_merge(&dup.member, &survivor).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].points(), 230, "30 available + 200 pending move");
    apply_merge(&mut dup, &mut survivor, at, &parts);

    // The duplicate's ledger is empty and ended, its history kept.
    assert_eq!(dup.member.merged_into, Some(Uuid::from_u128(SURVIVOR)));
    assert!(!dup.member.is_active());
    assert_eq!(dup.member.balance(at), Balance::default());
    assert_eq!(
        dup.member.totals.earned, 350,
        "its history is not rewritten"
    );
    assert_eq!(dup.member.totals.merged_out, 230);
    assert_eq!(entries_sum(&dup.member), 0);
    let o2 = dup
        .member
        .lines
        .iter()
        .find(|l| l.order_id == "O2")
        .unwrap();
    assert_eq!(o2.state_at(at), "merged");

    // The survivor became a member with the duplicate's enrolment time and tier.
    let s = &survivor.member;
    assert!(s.is_active());
    assert_eq!(s.enrolment.unwrap().at_us, 0);
    assert_eq!(s.enrolment.unwrap().channel, Channel::Web);
    assert_eq!(s.tier, "Silver");
    assert_eq!(s.totals.merged_in, 230);
    assert_eq!(s.entries.last().unwrap().kind, ledger::EntryKind::MergedIn);
    assert_eq!(entries_sum(s), 230);
    // Pending points stay pending until their own date; expiries keep theirs.
    let b = s.balance(at);
    assert_eq!((b.available, b.pending), (30, 200));
    assert_eq!(s.balance(noon(2024, 3, 16)).available, 230);
    for line in &before.lines {
        let moved = s.lines.iter().find(|l| l.line_id == line.line_id).unwrap();
        assert_eq!(moved.remaining(), line.remaining());
        assert_eq!(moved.expires_at_us, line.expires_at_us);
        assert_eq!(moved.available_at_us, line.available_at_us);
        assert_eq!(moved.state_at(at), line.state_at(at));
    }
    // The tier window sees the duplicate's points.
    assert_eq!(
        decide::qualifying(s, survivor.programme.at(at).unwrap(), at),
        350
    );
}

#[test]
fn given_a_moved_ledger_when_the_duplicate_is_decided_again_then_nothing_moves_twice() {
    let mut dup = duplicate_with_history();
    let mut survivor = survivor_world(programme());
    let at = noon(2024, 3, 5);
    let parts = decide_merge(&dup.member, &survivor).unwrap();
    apply_merge(&mut dup, &mut survivor, at, &parts);
    assert_eq!(
        decide_merge(&dup.member, &survivor),
        Ok(Vec::new()),
        "a replayed or crashed policy finds the ledger already moved"
    );
    // Merging into itself, or a customer who is not a member: nothing.
    assert_eq!(decide_merge(&survivor.member, &survivor), Ok(Vec::new()));
    let stranger = Member::new(Uuid::from_u128(9));
    assert_eq!(decide_merge(&stranger, &survivor), Ok(Vec::new()));
}

#[test]
fn given_a_moved_ledger_when_a_duplicate_order_is_refunded_then_the_survivor_loses_its_points() {
    let mut dup = duplicate_with_history();
    let mut survivor = survivor_world(programme());
    let parts = decide_merge(&dup.member, &survivor).unwrap();
    apply_merge(&mut dup, &mut survivor, noon(2024, 3, 5), &parts);

    // The refund of O2 (the duplicate's order) now resolves to the survivor.
    let cancelled = survivor.refund(noon(2024, 3, 10), "O2", 20_000);
    assert!(
        matches!(&cancelled[..], [DomainEvent::PointsCancelled(c)] if c.points == 200),
        "{cancelled:?}"
    );
    assert_eq!(survivor.member.balance(noon(2024, 3, 16)).available, 30);
    // The survivor's next purchase is not a "first purchase", and earns at Silver (×2).
    let events = survivor.buy(noon(2024, 4, 1), "O3", &[("x", 1, 1_000)]);
    assert_eq!(earned(&events), vec![("base".to_owned(), 20)]);
}

#[test]
fn given_an_enrolled_survivor_when_a_duplicate_merges_then_the_ledgers_combine() {
    let mut dup = duplicate_with_history();
    let mut survivor = survivor_world(programme());
    survivor.enrol(noon(2024, 2, 1));
    survivor.buy(noon(2024, 2, 2), "S1", &[("x", 1, 4_000)]);
    let at = noon(2024, 3, 5);
    assert_eq!(
        survivor.member.balance(at).available,
        90,
        "40 base + 50 bonus"
    );
    let parts = decide_merge(&dup.member, &survivor).unwrap();
    apply_merge(&mut dup, &mut survivor, at, &parts);
    let s = &survivor.member;
    assert_eq!(
        s.enrolment.unwrap().at_us,
        noon(2024, 2, 1),
        "keeps its own enrolment"
    );
    assert_eq!(s.tier, "", "keeps its own tier until the tick");
    let b = s.balance(at);
    assert_eq!((b.available, b.pending), (120, 200));
    assert_eq!(entries_sum(s), 320);
    // The tick sees 90 + 350 = 440 earned points: Silver.
    let ticked = survivor.tick(noon(2024, 3, 6));
    assert!(
        ticked
            .iter()
            .any(|e| matches!(e, DomainEvent::TierChanged(t) if t.to_tier == "Silver")),
        "{ticked:?}"
    );
    // Spending takes the oldest points first across both ledgers (the duplicate's O1
    // bonus line, earned 2024-01-01, before the survivor's S1).
    survivor.spend(noon(2024, 3, 7), 40).unwrap();
    let bonus = survivor
        .member
        .lines
        .iter()
        .find(|l| l.rule == "first_purchase" && l.earned_at_us == noon(2024, 1, 1))
        .unwrap();
    assert_eq!(bonus.remaining(), 0);
}

/// A programme allowing `debt_max` points of debt (no holding period), and a duplicate
/// that owes 100 under it: O1's 150 points spent, then O1 refunded in full.
fn duplicate_in_debt(debt_max: u64) -> (Programme, World) {
    let mut p = programme();
    p.debt_max_points = debt_max;
    p.holding_days = 0;
    let mut dup = World::new();
    dup.define(0, p.clone());
    dup.enrol(0);
    dup.buy(noon(2024, 1, 1), "O1", &[("x", 1, 10_000)]);
    dup.spend(noon(2024, 1, 2), 150).unwrap();
    dup.refund(noon(2024, 1, 3), "O1", 10_000);
    assert_eq!(
        dup.member.debt, 100,
        "the refunded order's 100 points were spent"
    );
    (p, dup)
}

#[test]
fn given_a_duplicate_in_debt_when_merged_then_the_debt_moves() {
    let (p, mut dup) = duplicate_in_debt(1_000);
    let mut survivor = survivor_world(p);
    survivor.enrol(0);
    survivor.buy(noon(2024, 1, 1), "S1", &[("x", 1, 30_000)]);
    let at = noon(2024, 1, 5);
    let parts = decide_merge(&dup.member, &survivor).unwrap();
    assert_eq!(parts[0].debt_points, 100);
    apply_merge(&mut dup, &mut survivor, at, &parts);
    assert_eq!(dup.member.debt, 0);
    assert_eq!(dup.member.balance(at).available, 0);
    assert_eq!(survivor.member.debt, 100);
    assert_eq!(survivor.member.balance(at).available, 350 - 100);
    assert_eq!(entries_sum(&survivor.member), 250);
    assert_eq!(entries_sum(&dup.member), 0);
}

#[test]
fn given_a_survivor_near_the_debt_limit_when_a_debtor_merges_then_the_excess_is_forgiven() {
    let (p, mut dup) = duplicate_in_debt(120);
    let mut survivor = survivor_world(p.clone());
    survivor.enrol(0);
    survivor.buy(noon(2024, 1, 1), "S1", &[("x", 1, 10_000)]);
    survivor.spend(noon(2024, 1, 2), 150).unwrap();
    survivor.refund(noon(2024, 1, 3), "S1", 6_000);
    assert_eq!(survivor.member.debt, 60, "60 of S1's spent points refunded");
    let at = noon(2024, 1, 5);
    let parts = decide_merge(&dup.member, &survivor).unwrap();
    assert_eq!(
        (parts[0].debt_points, parts[0].debt_forgiven_points),
        (60, 40)
    );
    apply_merge(&mut dup, &mut survivor, at, &parts);
    assert_eq!(
        survivor.member.debt, 120,
        "never past the programme's limit"
    );
    assert_eq!(dup.member.debt, 0);
    assert_eq!(dup.member.totals.forgiven, 40);
    assert_eq!(entries_sum(&dup.member), 0);
    assert_eq!(
        entries_sum(&survivor.member),
        survivor.member.remaining() as i64 - 120
    );
}

#[test]
fn given_a_large_ledger_when_merged_then_it_moves_in_bounded_parts() {
    let mut dup = World::new();
    dup.define(0, programme());
    dup.enrol(0);
    let lines = LOYALTY_MERGE_LINES_PER_EVENT + 40;
    for i in 0..lines {
        let events = decide::adjust(&dup.member, 1, "goodwill", None, i as i64).unwrap();
        dup.fold(
            i as i64,
            vec![(Uuid::from_u128(0x1_0000 + i as u128), events[0].clone())],
        );
    }
    let mut survivor = survivor_world(programme());
    let parts = decide_merge(&dup.member, &survivor).unwrap();
    // 552 adjustment lines, each counted at 192 + 10 bytes: 243 fit in a 48 KiB part.
    assert_eq!(parts.len(), 3);
    for (i, part) in parts.iter().enumerate() {
        assert_eq!((part.part, part.parts), (i as u32, 3));
        assert!(part.lines.len() <= LOYALTY_MERGE_LINES_PER_EVENT);
        let payload = DomainEvent::LedgerMerged(part.clone()).encode().unwrap();
        assert!(payload.len() < PAYLOAD_BYTES_MAX, "{}", payload.len());
        assert_eq!(DomainEvent::LedgerMerged(part.clone()).validate(""), Ok(()));
    }
    assert_eq!(parts[1].debt_points, 0);
    let at = 1_000_000;
    apply_merge(&mut dup, &mut survivor, at, &parts);
    assert_eq!(survivor.member.balance(at).available, lines as i64);
    assert_eq!(dup.member.balance(at).available, 0);
    assert_eq!(survivor.member.lines.len(), lines);
}
