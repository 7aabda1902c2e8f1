//! Backup schedules in the crontab syntax Kubernetes CronJobs use.
//!
//! The `cron` crate reads 6- or 7-field expressions (with seconds) and numbers the days of
//! the week 1–7 from Sunday, where crontab numbers them 0–6 (7 also Sunday). A 5-field
//! expression is therefore given a zero seconds field, and its numeric weekdays are turned
//! into names, so `0 3 * * 1-5` means weekdays at 03:00 as it does for a CronJob.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};

const DAYS: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

pub fn parse(expression: &str) -> Result<cron::Schedule> {
    let expression = expression.trim();
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let translated = match fields.len() {
        _ if expression.starts_with('@') => expression.to_string(),
        5 => format!(
            "0 {} {} {} {} {}",
            fields[0],
            fields[1],
            fields[2],
            fields[3],
            weekday_names(fields[4])?
        ),
        6 | 7 => expression.to_string(),
        _ => bail!(
            "schedule {expression:?} is not a crontab expression: use 5 fields like \"0 * * * *\" \
             (or @hourly, @daily, …)"
        ),
    };
    cron::Schedule::from_str(&translated)
        .with_context(|| format!("invalid schedule {expression:?}"))
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
pub fn next_run(schedule: &cron::Schedule, jitter: Duration) -> Option<DateTime<Utc>> {
    let next = schedule.upcoming(Utc).next()?;
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
        parse(expression).unwrap().after(&after).next().unwrap()
    }

    #[test]
    fn crontab_expressions_mean_what_they_mean_for_a_cronjob() {
        // Thursday 2026-11-26 23:30 UTC.
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 23, 30, 0).unwrap();
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

    #[test]
    fn malformed_schedules_are_refused() {
        assert!(parse("every hour").is_err());
        assert!(parse("0 * * *").is_err());
        assert!(parse("0 3 * * 9").is_err());
    }
}
