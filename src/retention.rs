//! Retention policies (`cairn forget`): which checkpoints of a series to keep, and why.
//!
//! A series is the checkpoints of one host and one set of paths. Within a series, newest
//! first, `--keep-last N` keeps the N newest; `--keep-hourly N` (and daily, weekly, monthly,
//! yearly) keeps the newest checkpoint of each of the N newest hours (days, ISO weeks, months,
//! years) that have one; `--keep-tag T` keeps every checkpoint tagged T. A checkpoint is kept
//! when any rule keeps it. Calendar periods are in local time, as people think of them.
//! Forgetting removes only checkpoint records; `prune` then returns the space.

use crate::checkpoint::{self, Series, Stored};
use crate::error::{Error, Result};
use crate::id::CheckpointId;
use crate::repo::Repository;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How many checkpoints each rule keeps, and the tags that keep a checkpoint regardless. A
/// plan's `keep` table is one (`keep = { last = 10, daily = 7 }`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    pub tags: Vec<String>,
}

impl Policy {
    /// Whether the policy keeps nothing at all (forgetting by it would remove everything).
    pub fn is_empty(&self) -> bool {
        self.last == 0 && self.periods().iter().all(|(_, n)| *n == 0) && self.tags.is_empty()
    }

    /// The calendar rules with their counts.
    fn periods(&self) -> [(Period, u32); 5] {
        [
            (Period::Hour, self.hourly),
            (Period::Day, self.daily),
            (Period::Week, self.weekly),
            (Period::Month, self.monthly),
            (Period::Year, self.yearly),
        ]
    }
}

/// A calendar period a rule counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// Why a checkpoint is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Tag(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Last => f.write_str("last"),
            Reason::Hourly => f.write_str("hourly"),
            Reason::Daily => f.write_str("daily"),
            Reason::Weekly => f.write_str("weekly"),
            Reason::Monthly => f.write_str("monthly"),
            Reason::Yearly => f.write_str("yearly"),
            Reason::Tag(tag) => write!(f, "tag {tag}"),
        }
    }
}

impl Period {
    fn reason(self) -> Reason {
        match self {
            Period::Hour => Reason::Hourly,
            Period::Day => Reason::Daily,
            Period::Week => Reason::Weekly,
            Period::Month => Reason::Monthly,
            Period::Year => Reason::Yearly,
        }
    }
}

/// Where a moment falls on the local calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalendarTime {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    /// The ISO 8601 week and the year it belongs to (which differs from `year` around
    /// New Year).
    pub week_year: i32,
    pub week: u32,
}

impl CalendarTime {
    /// The local calendar time of `seconds` since the Unix epoch.
    pub fn local(seconds: i64) -> Self {
        // SAFETY: an all-zero `tm` is a valid value to be overwritten.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let time = seconds as libc::time_t;
        // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
        if unsafe { libc::localtime_r(&time, &mut tm) }.is_null() {
            // Beyond the C library's range: counted in the epoch's periods.
            return CalendarTime::new(1970, 1, 1, 0, 0, 4);
        }
        CalendarTime::new(
            tm.tm_year + 1900,
            tm.tm_mon as u32 + 1,
            tm.tm_mday as u32,
            tm.tm_hour as u32,
            tm.tm_yday as u32,
            tm.tm_wday as u32,
        )
    }

    /// From the year, month (1-12), day of the month, hour, day of the year (0-based) and
    /// weekday (0 is Sunday).
    pub fn new(year: i32, month: u32, day: u32, hour: u32, year_day: u32, weekday: u32) -> Self {
        let iso_weekday = (weekday + 6) % 7 + 1;
        let week = (year_day as i32 + 1 - iso_weekday as i32 + 10) / 7;
        let (week_year, week) = if week < 1 {
            (year - 1, iso_weeks_in(year - 1))
        } else if week as u32 > iso_weeks_in(year) {
            (year + 1, 1)
        } else {
            (year, week as u32)
        };
        CalendarTime {
            year,
            month,
            day,
            hour,
            week_year,
            week,
        }
    }

    /// The period of `kind` this moment falls in, as a comparable key.
    pub fn period(&self, kind: Period) -> (i32, u32, u32, u32) {
        match kind {
            Period::Hour => (self.year, self.month, self.day, self.hour),
            Period::Day => (self.year, self.month, self.day, 0),
            Period::Week => (self.week_year, self.week, 0, 0),
            Period::Month => (self.year, self.month, 0, 0),
            Period::Year => (self.year, 0, 0, 0),
        }
    }
}

/// The number of ISO weeks in `year`: 53 when it starts on a Thursday, or on a Wednesday in a
/// leap year; else 52.
fn iso_weeks_in(year: i32) -> u32 {
    let weekday_of_dec_31 =
        |y: i32| (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7);
    if weekday_of_dec_31(year) == 4 || weekday_of_dec_31(year - 1) == 3 {
        53
    } else {
        52
    }
}

/// One checkpoint as the policy sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub time: CalendarTime,
    pub tags: &'a [String],
}

/// Why each checkpoint of a series is kept (an empty list: it is removed). `series` must be
/// sorted newest first.
pub fn apply(policy: &Policy, series: &[Candidate<'_>]) -> Vec<Vec<Reason>> {
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); series.len()];
    for reason in reasons.iter_mut().take(policy.last as usize) {
        reason.push(Reason::Last);
    }
    for (period, count) in policy.periods() {
        let mut left = count;
        let mut last_kept = None;
        for (candidate, reason) in series.iter().zip(reasons.iter_mut()) {
            if left == 0 {
                break;
            }
            let key = candidate.time.period(period);
            if last_kept != Some(key) {
                reason.push(period.reason());
                last_kept = Some(key);
                left -= 1;
            }
        }
    }
    for (candidate, reason) in series.iter().zip(reasons.iter_mut()) {
        for tag in &policy.tags {
            if candidate.tags.contains(tag) {
                reason.push(Reason::Tag(tag.clone()));
            }
        }
    }
    reasons
}

/// What a policy decides for one series of checkpoints, newest first.
#[derive(Debug, Serialize)]
pub struct SeriesPlan {
    pub host: String,
    pub paths: Vec<String>,
    /// For pulled checkpoints, the server they were pulled from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulled_from: Option<String>,
    pub checkpoints: Vec<Decision>,
}

/// One checkpoint and why it is kept (no reason: it is removed).
#[derive(Debug, Serialize)]
pub struct Decision {
    pub id: CheckpointId,
    pub time: String,
    pub tags: Vec<String>,
    pub reasons: Vec<Reason>,
}

/// Applies `policy` to every series of `checkpoints` (see `Checkpoint::series`).
pub fn plan(policy: &Policy, checkpoints: Vec<Stored>) -> Result<Vec<SeriesPlan>> {
    type Key = (String, Vec<String>, Option<String>);
    let mut series: BTreeMap<Key, Vec<Stored>> = BTreeMap::new();
    for stored in checkpoints {
        let Series {
            host,
            paths,
            server,
        } = stored.record.series();
        let key = (host.to_owned(), paths.to_vec(), server.map(str::to_owned));
        series.entry(key).or_default().push(stored);
    }
    series
        .into_iter()
        .map(|((host, paths, pulled_from), mut members)| {
            members.sort_by(|a, b| {
                checkpoint::catalogue_order((&b.id, &b.record), (&a.id, &a.record))
            });
            let candidates = members
                .iter()
                .map(|Stored { id, record }| {
                    let time = humantime::parse_rfc3339(&record.time).map_err(|e| {
                        Error::corrupt(format!("checkpoint {id}"), format!("bad time: {e}"))
                    })?;
                    let seconds = match time.duration_since(std::time::UNIX_EPOCH) {
                        Ok(after) => after.as_secs() as i64,
                        Err(before) => -(before.duration().as_secs() as i64),
                    };
                    Ok(Candidate {
                        time: CalendarTime::local(seconds),
                        tags: &record.tags,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let reasons = apply(policy, &candidates);
            let checkpoints = members
                .iter()
                .zip(reasons)
                .map(|(Stored { id, record }, reasons)| Decision {
                    id: *id,
                    time: record.time.clone(),
                    tags: record.tags.clone(),
                    reasons,
                })
                .collect();
            Ok(SeriesPlan {
                host,
                paths,
                pulled_from,
                checkpoints,
            })
        })
        .collect()
}

/// What `forget` decided for each series and how many records it removed (would remove, in a
/// dry run).
#[derive(Debug, Serialize)]
pub struct Forgotten {
    pub series: Vec<SeriesPlan>,
    pub removed: u64,
}

/// Applies `policy` to the checkpoints `filter` selects and removes the records it keeps no
/// reason for (a dry run's repository only counts them). The repository's exclusive lock is
/// held from the listing to the last removal, as for any deletion, so no backup adds to a
/// series while its plan is made (a dry run shares it).
pub fn forget(
    repo: &Repository,
    policy: &Policy,
    filter: &checkpoint::CheckpointFilter,
) -> Result<Forgotten> {
    let _lock = crate::repo::lock::acquire(repo, true, "forget")?;
    let series = plan(policy, checkpoint::list_matching(repo, filter)?)?;
    let mut removed = 0;
    for decision in series.iter().flat_map(|p| &p.checkpoints) {
        if decision.reasons.is_empty() {
            checkpoint::remove(repo, &decision.id)?;
            removed += 1;
        }
    }
    Ok(Forgotten { series, removed })
}

/// Removes the checkpoint records `ids` names (a dry run's repository only counts them),
/// under the exclusive lock; an id the repository does not hold is an error before anything
/// is removed.
pub fn forget_named(repo: &Repository, ids: &[CheckpointId]) -> Result<u64> {
    let _lock = crate::repo::lock::acquire(repo, true, "forget")?;
    for id in ids {
        if !checkpoint::exists(repo, id)? {
            return Err(Error::not_found(
                crate::error::Missing::Checkpoint { asked: id.to_hex() },
                format!(
                    "no checkpoint {} in {}; nothing was removed",
                    id.short(),
                    repo.backend().location()
                ),
            ));
        }
    }
    for id in ids {
        checkpoint::remove(repo, id)?;
    }
    Ok(ids.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference model: a rule over periods keeps the newest checkpoint of each of the N
    /// newest periods that have one.
    fn kept_by_period(series: &[Candidate<'_>], period: Period, count: u32) -> Vec<usize> {
        let mut periods: Vec<(i32, u32, u32, u32)> =
            series.iter().map(|c| c.time.period(period)).collect();
        // Distinct periods, newest first (the series is newest first).
        periods.sort_unstable_by(|a, b| b.cmp(a));
        periods.dedup();
        periods.truncate(count as usize);
        periods
            .iter()
            .map(|key| {
                series
                    .iter()
                    .position(|c| c.time.period(period) == *key)
                    .expect("a period of the series")
            })
            .collect()
    }

    fn calendar(seconds: i64) -> CalendarTime {
        CalendarTime::local(seconds)
    }

    #[test]
    fn iso_weeks_match_the_calendar() {
        let week = |year, month, day, year_day, weekday| {
            let t = CalendarTime::new(year, month, day, 0, year_day, weekday);
            (t.week_year, t.week)
        };
        // 2020-12-31 (a Thursday) and 2021-01-03 (a Sunday) are in week 53 of 2020; Monday
        // 2021-01-04 starts week 1; Monday 2024-12-30 is in week 1 of 2025.
        assert_eq!(week(2020, 12, 31, 365, 4), (2020, 53));
        assert_eq!(week(2021, 1, 3, 2, 0), (2020, 53));
        assert_eq!(week(2021, 1, 4, 3, 1), (2021, 1));
        assert_eq!(week(2024, 12, 30, 364, 1), (2025, 1));
        assert_eq!(week(2026, 11, 24, 327, 2), (2026, 48));
    }

    /// Days since 1970-01-01 of a civil date, and back (proleptic Gregorian).
    fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let year_of_era = y - era * 400;
        let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    fn civil_from_days(days: i64) -> (i64, i64, i64) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }

    #[test]
    fn iso_weeks_agree_with_the_thursday_rule_for_every_day_of_three_centuries() {
        // The ISO week of a day is the week of its Thursday, counted from its year's start.
        for days in days_from_civil(1900, 1, 1)..days_from_civil(2200, 1, 1) {
            let (year, month, day) = civil_from_days(days);
            let weekday = (days + 4).rem_euclid(7); // 1970-01-01 was a Thursday
            let year_day = days - days_from_civil(year, 1, 1);
            let thursday = days - (weekday + 6) % 7 + 3;
            let (week_year, _, _) = civil_from_days(thursday);
            let week = (thursday - days_from_civil(week_year, 1, 1)) / 7 + 1;
            let t = CalendarTime::new(
                year as i32,
                month as u32,
                day as u32,
                0,
                year_day as u32,
                weekday as u32,
            );
            assert_eq!(
                (t.week_year, t.week),
                (week_year as i32, week as u32),
                "{year}-{month}-{day}"
            );
        }
    }

    #[test]
    fn daily_keeps_the_newest_of_each_of_the_newest_days() {
        // Two checkpoints a day, at 15:00 and 03:00, from Friday 2026-01-09 back to Monday
        // 2026-01-05, newest first; the oldest is tagged.
        let series_times: Vec<CalendarTime> = (0..10u32)
            .map(|i| {
                let day = 9 - i / 2;
                let hour = if i % 2 == 0 { 15 } else { 3 };
                CalendarTime::new(2026, 1, day, hour, day - 1, (day + 3) % 7)
            })
            .collect();
        let tags: Vec<Vec<String>> = (0..10)
            .map(|i| if i == 9 { vec!["keep".into()] } else { vec![] })
            .collect();
        let series: Vec<Candidate> = series_times
            .iter()
            .zip(&tags)
            .map(|(time, tags)| Candidate { time: *time, tags })
            .collect();
        let policy = Policy {
            last: 1,
            daily: 3,
            weekly: 2,
            tags: vec!["keep".into()],
            ..Policy::default()
        };
        let reasons = apply(&policy, &series);
        let kept: Vec<usize> = (0..10).filter(|i| !reasons[*i].is_empty()).collect();
        // The 15:00 ones of the 9th, 8th and 7th, and the tagged one; the week is one.
        assert_eq!(kept, vec![0, 2, 4, 9]);
        assert_eq!(
            reasons[0],
            vec![Reason::Last, Reason::Daily, Reason::Weekly]
        );
        assert_eq!(reasons[2], vec![Reason::Daily]);
        assert_eq!(reasons[9], vec![Reason::Tag("keep".into())]);
    }

    proptest! {
        #[test]
        fn every_rule_keeps_what_the_reference_model_keeps(
            mut seconds in proptest::collection::vec(0i64..5 * 365 * 86_400, 0..60),
            last in 0u32..5,
            counts in proptest::array::uniform5(0u32..6),
            tagged in proptest::collection::vec(any::<bool>(), 60),
        ) {
            seconds.sort_unstable_by(|a, b| b.cmp(a));
            let base = 1_600_000_000;
            let tags: Vec<Vec<String>> = tagged
                .iter()
                .map(|t| if *t { vec!["monthly-report".to_owned()] } else { Vec::new() })
                .collect();
            let series: Vec<Candidate> = seconds
                .iter()
                .zip(&tags)
                .map(|(s, tags)| Candidate { time: calendar(base + s), tags })
                .collect();
            let policy = Policy {
                last,
                hourly: counts[0],
                daily: counts[1],
                weekly: counts[2],
                monthly: counts[3],
                yearly: counts[4],
                tags: vec!["monthly-report".into()],
            };
            let reasons = apply(&policy, &series);
            let mut expected: Vec<Vec<Reason>> = vec![Vec::new(); series.len()];
            for reason in expected.iter_mut().take(last as usize) {
                reason.push(Reason::Last);
            }
            for (period, count) in policy.periods() {
                for i in kept_by_period(&series, period, count) {
                    expected[i].push(period.reason());
                }
            }
            for (i, candidate) in series.iter().enumerate() {
                if !candidate.tags.is_empty() {
                    expected[i].push(Reason::Tag("monthly-report".into()));
                }
            }
            prop_assert_eq!(reasons, expected);
        }
    }
}
