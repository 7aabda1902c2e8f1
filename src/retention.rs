//! Which snapshots a retention policy keeps: restic's `forget` semantics, plus the rules
//! that protect what a restore needs.
//!
//! Going from the newest snapshot to the oldest: `keep_last` keeps the newest n;
//! `keep_hourly` keeps the newest snapshot of each of the last n hours that have one (and
//! likewise daily, weekly — ISO weeks — and monthly, in UTC). On top of the policy, the
//! newest snapshot and the newest `final` one are always kept, and so is every snapshot
//! whose archive a kept snapshot needs (an incremental's chain).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};

use crate::manifest::Manifest;

#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// Why it is kept: "last", "daily", "needed by <id>", …; empty when it is forgotten.
    pub reasons: Vec<String>,
}

impl Policy {
    pub fn check(&self) -> Result<()> {
        if self.keep_last
            + self.keep_hourly
            + self.keep_daily
            + self.keep_weekly
            + self.keep_monthly
            == 0
        {
            bail!(
                "no --keep-* rule given: refusing to forget every snapshot (try --keep-last 24 --keep-daily 14)"
            );
        }
        Ok(())
    }
}

/// A calendar rule of the policy: keep the newest snapshot of each of the `remaining`
/// newest periods (hours, days…) that hold one.
struct Period {
    name: &'static str,
    remaining: u32,
    /// The period a time falls in, as a string that differs between periods.
    of: fn(&DateTime<Utc>) -> String,
    /// The period of the snapshot kept last by this rule.
    last: Option<String>,
}

impl Period {
    fn new(name: &'static str, keep: u32, of: fn(&DateTime<Utc>) -> String) -> Self {
        Self {
            name,
            remaining: keep,
            of,
            last: None,
        }
    }

    /// Whether this rule keeps a snapshot finished at `time` (snapshots come newest first).
    fn keeps(&mut self, time: &DateTime<Utc>) -> bool {
        let period = (self.of)(time);
        if self.remaining == 0 || self.last.as_ref() == Some(&period) {
            return false;
        }
        self.remaining -= 1;
        self.last = Some(period);
        true
    }
}

/// Decides for every snapshot, newest first.
pub fn decide(snapshots: &[Manifest], policy: &Policy) -> Vec<Decision> {
    let mut newest_first: Vec<&Manifest> = snapshots.iter().collect();
    newest_first.sort_by(|a, b| b.id.cmp(&a.id));
    let mut periods = [
        Period::new("hourly", policy.keep_hourly, |t| {
            t.format("%Y-%m-%d %H").to_string()
        }),
        Period::new("daily", policy.keep_daily, |t| {
            t.format("%Y-%m-%d").to_string()
        }),
        Period::new("weekly", policy.keep_weekly, |t| {
            t.format("%G-W%V").to_string()
        }),
        Period::new("monthly", policy.keep_monthly, |t| {
            t.format("%Y-%m").to_string()
        }),
    ];
    let newest_final = newest_first
        .iter()
        .find(|m| m.r#final)
        .map(|m| m.id.clone());
    let mut decisions: Vec<Decision> = Vec::new();
    for (position, manifest) in newest_first.iter().enumerate() {
        let mut reasons = Vec::new();
        if position == 0 {
            reasons.push("newest".to_string());
        }
        if (position as u32) < policy.keep_last {
            reasons.push("last".to_string());
        }
        for period in periods.iter_mut() {
            if period.keeps(&manifest.finished_at) {
                reasons.push(period.name.to_string());
            }
        }
        if newest_final.as_ref() == Some(&manifest.id) {
            reasons.push("newest final".to_string());
        }
        decisions.push(Decision {
            id: manifest.id.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    keep_chains(snapshots, &mut decisions);
    decisions
}

/// [`decide`] for a repository where the `unsigned` snapshots were accepted only through
/// `--allow-unsigned` (a migration): signed and unsigned snapshots are each decided among
/// their own, so no number of unsigned snapshots, planted by a bucket writer or not, pushes
/// a signed one out of `keep_last` or out of its hour, day, week or month, and the newest
/// signed snapshot is always kept. Chains across the two are kept as always.
pub fn decide_apart(
    snapshots: &[Manifest],
    unsigned: &std::collections::BTreeSet<String>,
    policy: &Policy,
) -> Vec<Decision> {
    if unsigned.is_empty() {
        return decide(snapshots, policy);
    }
    let (without, with): (Vec<Manifest>, Vec<Manifest>) = snapshots
        .iter()
        .cloned()
        .partition(|m| unsigned.contains(&m.id));
    let mut decisions = decide(&with, policy);
    decisions.extend(decide(&without, policy));
    keep_chains(snapshots, &mut decisions);
    decisions.sort_by(|a, b| b.id.cmp(&a.id));
    decisions
}

/// Keeps every snapshot whose archive a kept snapshot needs: restore reads those archives.
fn keep_chains(snapshots: &[Manifest], decisions: &mut [Decision]) {
    let by_id: BTreeMap<String, &Manifest> = snapshots.iter().map(|m| (m.id.clone(), m)).collect();
    let mut needed: BTreeMap<String, String> = BTreeMap::new();
    for decision in decisions.iter().filter(|d| d.keep) {
        for dependency in by_id[&decision.id].archives_needed() {
            if dependency != decision.id {
                needed
                    .entry(dependency)
                    .or_insert_with(|| decision.id.clone());
            }
        }
    }
    for decision in decisions.iter_mut() {
        if let Some(by) = needed.get(&decision.id) {
            let reason = format!("needed by {by}");
            decision.keep = true;
            if !decision.reasons.contains(&reason) {
                decision.reasons.push(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ArchiveInfo, ContentCounts};

    fn snapshot(time: &str, parent: Option<&str>, is_final: bool) -> Manifest {
        let at: DateTime<Utc> = time.parse().unwrap();
        let id = at.format("%Y%m%dT%H%M%S%.3fZ").to_string();
        Manifest {
            format: 1,
            id: id.clone(),
            started_at: at,
            finished_at: at,
            agent_version: "test".into(),
            r#final: is_final,
            lease_owner: None,
            archive: ArchiveInfo {
                key: String::new(),
                size: 0,
                sha256: String::new(),
                encoding: String::new(),
                header: None,
                parts: None,
            },
            index: None,
            parent: parent.map(str::to_string),
            chain_length: 0,
            chain_full: None,
            depends_on: parent
                .map(|p| vec![p.to_string(), id.clone()])
                .unwrap_or_default(),
            content: ContentCounts::default(),
            signal_db: None,
            attachments: Default::default(),
            catalog_digest: None,
        }
    }

    /// The decisions as a table: one line per snapshot, newest first.
    fn table(snapshots: &[Manifest], policy: Policy) -> String {
        decide(snapshots, &policy)
            .iter()
            .map(|d| {
                format!(
                    "{} {:6} {}",
                    d.id,
                    if d.keep { "keep" } else { "forget" },
                    d.reasons.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn hourly_for_three_days() -> Vec<Manifest> {
        let mut all = Vec::new();
        for day in 24..=26 {
            for hour in [0, 6, 12, 18] {
                all.push(snapshot(
                    &format!("2026-11-{day}T{hour:02}:00:00Z"),
                    None,
                    false,
                ));
            }
        }
        all
    }

    #[test]
    fn keep_last_and_daily() {
        let policy = Policy {
            keep_last: 2,
            keep_daily: 3,
            ..Policy::default()
        };
        assert_eq!(
            table(&hourly_for_three_days(), policy),
            "\
20261126T180000.000Z keep   newest, last, daily
20261126T120000.000Z keep   last
20261126T060000.000Z forget 
20261126T000000.000Z forget 
20261125T180000.000Z keep   daily
20261125T120000.000Z forget 
20261125T060000.000Z forget 
20261125T000000.000Z forget 
20261124T180000.000Z keep   daily
20261124T120000.000Z forget 
20261124T060000.000Z forget 
20261124T000000.000Z forget "
        );
    }

    #[test]
    fn hourly_weekly_monthly_buckets() {
        let snapshots = vec![
            snapshot("2026-09-30T23:00:00Z", None, false),
            snapshot("2026-10-31T10:00:00Z", None, false),
            snapshot("2026-11-01T09:00:00Z", None, false), // a Sunday: ISO week 44 with Oct 31
            snapshot("2026-11-02T09:00:00Z", None, false), // Monday: week 45
            snapshot("2026-11-02T09:30:00Z", None, false),
        ];
        let policy = Policy {
            keep_hourly: 2,
            keep_weekly: 2,
            keep_monthly: 3,
            ..Policy::default()
        };
        assert_eq!(
            table(&snapshots, policy),
            "\
20261102T093000.000Z keep   newest, hourly, weekly, monthly
20261102T090000.000Z forget 
20261101T090000.000Z keep   hourly, weekly
20261031T100000.000Z keep   monthly
20260930T230000.000Z keep   monthly"
        );
    }

    #[test]
    fn the_newest_final_and_every_chain_a_kept_snapshot_needs_survive() {
        let full = snapshot("2026-11-20T00:00:00Z", None, false);
        let final_one = snapshot("2026-11-21T00:00:00Z", None, true);
        let full2 = snapshot("2026-11-22T00:00:00Z", None, false);
        let incremental = snapshot("2026-11-23T00:00:00Z", Some(&full2.id), false);
        let policy = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        assert_eq!(
            table(&[full, final_one, full2, incremental], policy),
            "\
20261123T000000.000Z keep   newest, last
20261122T000000.000Z keep   needed by 20261123T000000.000Z
20261121T000000.000Z keep   newest final
20261120T000000.000Z forget "
        );
    }

    #[test]
    fn an_empty_policy_is_refused() {
        assert!(
            Policy::default()
                .check()
                .unwrap_err()
                .to_string()
                .contains("refusing to forget every snapshot")
        );
    }
}
