//! Backup schedules in the crontab syntax Kubernetes CronJobs use.
//!
//! The `cron` crate reads 6- or 7-field expressions (with seconds) and numbers the days of
//! the week 1–7 from Sunday, where crontab numbers them 0–6 (7 also Sunday). A 5-field
//! expression is therefore given a zero seconds field, and its numeric weekdays are turned
//! into names, so `0 3 * * 1-5` means weekdays at 03:00 as it does for a CronJob.
//!
//! The crate also requires a day to match both day fields, where cron has always run on a
//! day that matches either when both are restricted: `0 3 1 * 1` is 03:00 on the 1st *and*
//! on every Monday, for Vixie cron and for the library the CronJob controller uses
//! (robfig/cron: a field is unrestricted when it is `*` or `?`, stepped by 1 at most). Such
//! an expression becomes two schedules, one per day field, and a run is due at the earlier.

use std::iter::Peekable;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};

const DAYS: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

/// A parsed schedule: when its runs are due.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Due whenever any of these is (two when both day fields are restricted, else one).
    any_of: Vec<cron::Schedule>,
}

impl Schedule {
    /// The times it is due after `time`, in order.
    pub fn after(&self, time: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        Earliest(
            self.any_of
                .iter()
                .map(|schedule| schedule.after(&time).peekable())
                .collect(),
        )
    }

    /// The times it is due from now on, in order.
    pub fn upcoming(&self) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        self.after(Utc::now())
    }
}

/// Merges ordered streams of times into one, each time once.
struct Earliest<I: Iterator<Item = DateTime<Utc>>>(Vec<Peekable<I>>);

impl<I: Iterator<Item = DateTime<Utc>>> Iterator for Earliest<I> {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        let earliest = self
            .0
            .iter_mut()
            .filter_map(|times| times.peek().copied())
            .min()?;
        for times in &mut self.0 {
            times.next_if_eq(&earliest);
        }
        Some(earliest)
    }
}

pub fn parse(expression: &str) -> Result<Schedule> {
    let expression = expression.trim();
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let mut fields: Vec<String> = match fields.len() {
        _ if expression.starts_with('@') => {
            return Ok(Schedule {
                any_of: vec![from_crate_syntax(expression, expression)?],
            });
        }
        5 => std::iter::once("0".to_string())
            .chain(fields[..4].iter().map(|field| field.to_string()))
            .chain([weekday_names(fields[4])?])
            .collect(),
        6 | 7 => fields.iter().map(|field| field.to_string()).collect(),
        _ => bail!(
            "schedule {expression:?} is not a crontab expression: use 5 fields like \"0 * * * *\" \
             (or @hourly, @daily, …)"
        ),
    };
    // Seconds, minutes, hours, day of month, month, day of week[, year].
    const DAY_OF_MONTH: usize = 3;
    const DAY_OF_WEEK: usize = 5;
    let mut any_of = Vec::new();
    if is_restricted(&fields[DAY_OF_MONTH]) && is_restricted(&fields[DAY_OF_WEEK]) {
        let day_of_week = std::mem::replace(&mut fields[DAY_OF_WEEK], "*".to_string());
        any_of.push(from_crate_syntax(expression, &fields.join(" "))?);
        fields[DAY_OF_WEEK] = day_of_week;
        fields[DAY_OF_MONTH] = "*".to_string();
    }
    any_of.push(from_crate_syntax(expression, &fields.join(" "))?);
    Ok(Schedule { any_of })
}

fn from_crate_syntax(expression: &str, translated: &str) -> Result<cron::Schedule> {
    cron::Schedule::from_str(translated).with_context(|| format!("invalid schedule {expression:?}"))
}

/// Whether a day field limits the days: anything but `*` or `?` (stepped by 1 at most).
fn is_restricted(field: &str) -> bool {
    !matches!(field, "*" | "?" | "*/1" | "?/1")
}

/// Rewrites crontab's numeric weekdays (0–7, Sunday first and last) as names.
fn weekday_names(field: &str) -> Result<String> {
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let mut ends = Vec::new();
        for end in range.split('-') {
            ends.push(match end.parse::<usize>() {
                Ok(day) if day < DAYS.len() => DAYS[day].to_string(),
                Ok(day) => bail!("day of week {day} is out of range 0–7"),
                Err(_) => end.to_string(),
            });
        }
        let mut item = ends.join("-");
        if let Some(step) = step {
            item = format!("{item}/{step}");
        }
        items.push(item);
    }
    Ok(items.join(","))
}

/// When the next backup starts: the next scheduled time plus a random delay of up to
/// `jitter`, so many agents on one schedule do not hit the bucket at the same second.
pub fn next_run(schedule: &Schedule, jitter: Duration) -> Option<DateTime<Utc>> {
    let next = schedule.upcoming().next()?;
    let delay = if jitter.is_zero() {
        Duration::ZERO
    } else {
        jitter.mul_f64(rand::random::<f64>())
    };
    Some(next + chrono::Duration::from_std(delay).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike};

    fn first_after(expression: &str, after: DateTime<Utc>) -> DateTime<Utc> {
        parse(expression).unwrap().after(after).next().unwrap()
    }

    #[test]
    fn crontab_expressions_mean_what_they_mean_for_a_cronjob() {
        let now = thursday();
        assert_eq!(
            first_after("0 * * * *", now),
            Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap()
        );
        assert_eq!(
            first_after("@hourly", now),
            Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap()
        );
        assert_eq!(first_after("*/15 * * * *", now).minute(), 45);
        // 0 is Sunday in crontab: the next Sunday is the 29th.
        let sunday = first_after("0 3 * * 0", now);
        assert_eq!((sunday.day(), sunday.weekday()), (29, chrono::Weekday::Sun));
        assert_eq!(first_after("0 3 * * 7", now).day(), 29);
        // 1-5 is Monday to Friday: Friday the 27th comes first.
        assert_eq!(
            first_after("0 3 * * 1-5", now).weekday(),
            chrono::Weekday::Fri
        );
        assert_eq!(
            first_after("0 3 * * 6,0", now).weekday(),
            chrono::Weekday::Sat
        );
    }

    /// Thursday 2026-11-26 23:30 UTC.
    fn thursday() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 23, 30, 0).unwrap()
    }

    fn days(expression: &str, count: usize) -> Vec<(u32, u32, chrono::Weekday)> {
        let schedule = parse(expression).unwrap();
        let runs = schedule.after(thursday()).take(count);
        runs.map(|t| (t.month(), t.day(), t.weekday())).collect()
    }

    #[test]
    fn both_day_fields_restricted_run_on_days_that_match_either() {
        use chrono::Weekday::{Mon, Tue};
        // The 1st of December is a Tuesday; the Mondays around it are the 30th and the 7th.
        assert_eq!(
            days("0 3 1 * 1", 4),
            [(11, 30, Mon), (12, 1, Tue), (12, 7, Mon), (12, 14, Mon)]
        );
        // A day that matches both runs once.
        assert_eq!(days("0 3 30 * 1", 2), [(11, 30, Mon), (12, 7, Mon)]);
        // A stepped day field is restricted too (robfig/cron: only a step of 1 keeps `*`).
        assert_eq!(days("0 3 */10 * 1", 3).len(), 3);
        assert_eq!(days("0 3 */10 * 1", 3)[0], (11, 30, Mon));
    }

    #[test]
    fn one_unrestricted_day_field_leaves_the_other_alone() {
        use chrono::Weekday::{Mon, Tue};
        // `*` (or `?`, or `*/1`) in one day field: the other field alone decides.
        assert_eq!(
            days("0 3 1 * *", 2),
            [(12, 1, Tue), (1, 1, chrono::Weekday::Fri)]
        );
        assert_eq!(days("0 3 ? * 1", 2), [(11, 30, Mon), (12, 7, Mon)]);
        assert_eq!(days("0 3 */1 * 1", 2), [(11, 30, Mon), (12, 7, Mon)]);
        assert_eq!(days("0 3 1 * ?", 1), [(12, 1, Tue)]);
    }

    #[test]
    fn the_month_field_limits_both_day_rules() {
        // The 1st or a Monday, in January only.
        let runs = days("0 3 1 1 1", 3);
        assert_eq!(runs[0], (1, 1, chrono::Weekday::Fri));
        assert_eq!(runs[1], (1, 4, chrono::Weekday::Mon));
        assert!(runs.iter().all(|(month, _, _)| *month == 1));
    }

    #[test]
    fn seconds_expressions_follow_the_same_day_rule() {
        let runs = days("0 0 3 1 * MON", 2);
        assert_eq!(runs[0], (11, 30, chrono::Weekday::Mon));
        assert_eq!(runs[1], (12, 1, chrono::Weekday::Tue));
    }

    #[test]
    fn malformed_schedules_are_refused() {
        assert!(parse("every hour").is_err());
        assert!(parse("0 * * *").is_err());
        assert!(parse("0 3 * * 9").is_err());
        assert!(parse("0 3 32 * 1").is_err());
    }
}
