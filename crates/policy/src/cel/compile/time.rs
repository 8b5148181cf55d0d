//! Time zones and timestamp fields for the accessors
//! (`getHours('America/New_York')`), with a cache of the last offset.

use super::*;

// === Time zones ===

#[derive(Debug, Clone, Copy)]
pub(super) enum Zone {
    Utc,
    Fixed(FixedOffset),
    Named(Tz),
}

/// Remembers a named zone's offset for the last quarter hour asked about.
/// Every time zone changes its offset only at quarter-hour boundaries, so
/// one quarter hour has one offset. Packed in one atomic: no lock, no tear.
#[derive(Debug, Default)]
pub(super) struct OffsetCache(std::sync::atomic::AtomicU64);

impl OffsetCache {
    const OFFSET_BITS: u32 = 20;
    const OFFSET_BIAS: i64 = 1 << 19;

    pub(super) fn get_or_compute(&self, unix_seconds: i64, compute: impl FnOnce() -> i64) -> i64 {
        use std::sync::atomic::Ordering::Relaxed;
        let quarter = unix_seconds.div_euclid(900);
        // Quarter 0 is reserved for "empty"; far-away times skip the cache.
        let cacheable = quarter > 0 && quarter < (1 << 40);
        if cacheable {
            let packed = self.0.load(Relaxed);
            if packed >> Self::OFFSET_BITS == quarter as u64 {
                return (packed & ((1 << Self::OFFSET_BITS) - 1)) as i64 - Self::OFFSET_BIAS;
            }
        }
        let offset = compute();
        if cacheable && offset.abs() < Self::OFFSET_BIAS {
            self.0.store(((quarter as u64) << Self::OFFSET_BITS) | (offset + Self::OFFSET_BIAS) as u64, Relaxed);
        }
        offset
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimeField {
    FullYear,
    Month,
    Date,
    DayOfMonth,
    DayOfWeek,
    DayOfYear,
    Hours,
    Minutes,
    Seconds,
    Milliseconds,
}

impl TimeField {
    pub(super) fn parse(name: &str) -> TimeField {
        match name {
            "getFullYear" => TimeField::FullYear,
            "getMonth" => TimeField::Month,
            "getDate" => TimeField::Date,
            "getDayOfMonth" => TimeField::DayOfMonth,
            "getDayOfWeek" => TimeField::DayOfWeek,
            "getDayOfYear" => TimeField::DayOfYear,
            "getHours" => TimeField::Hours,
            "getMinutes" => TimeField::Minutes,
            "getSeconds" => TimeField::Seconds,
            _ => TimeField::Milliseconds,
        }
    }

    pub(super) fn on_duration(self) -> bool {
        matches!(self, TimeField::Hours | TimeField::Minutes | TimeField::Seconds | TimeField::Milliseconds)
    }

    /// CEL's conventions: months and day-of-month/year from 0, date from 1,
    /// Sunday is day 0.
    pub(super) fn of<T: Datelike + Timelike>(self, t: &T) -> i64 {
        match self {
            TimeField::FullYear => i64::from(t.year()),
            TimeField::Month => i64::from(t.month0()),
            TimeField::Date => i64::from(t.day()),
            TimeField::DayOfMonth => i64::from(t.day0()),
            TimeField::DayOfWeek => i64::from(t.weekday().num_days_from_sunday()),
            TimeField::DayOfYear => i64::from(t.ordinal0()),
            TimeField::Hours => i64::from(t.hour()),
            TimeField::Minutes => i64::from(t.minute()),
            TimeField::Seconds => i64::from(t.second()),
            TimeField::Milliseconds => i64::from(t.nanosecond() % 1_000_000_000 / 1_000_000),
        }
    }
}

impl Zone {
    pub(super) fn parse(name: &str) -> Result<Zone, String> {
        if name == "UTC" || name == "Z" {
            return Ok(Zone::Utc);
        }
        // A fixed offset: `+HH:MM`, `-HH:MM`, or (as cel-go accepts) `HH:MM`.
        let signed = name.strip_prefix(['+', '-']).map(|body| (if name.starts_with('-') { -1 } else { 1 }, body));
        let unsigned = (name.contains(':') && name.starts_with(|c: char| c.is_ascii_digit())).then_some((1, name));
        if let Some((sign, body)) = signed.or(unsigned) {
            let (hours, minutes) = body.split_once(':').unwrap_or((body, "0"));
            let parsed = hours.parse::<i32>().ok().zip(minutes.parse::<i32>().ok());
            if let Some((h, m)) = parsed.filter(|(h, m)| *h <= 23 && *m <= 59)
                && let Some(offset) = FixedOffset::east_opt(sign * (h * 3600 + m * 60))
            {
                return Ok(Zone::Fixed(offset));
            }
            return Err(format!("invalid UTC offset {name:?}; use +HH:MM"));
        }
        name.parse::<Tz>().map(Zone::Named).map_err(|_| format!("unknown time zone {name:?}"))
    }

    /// The zone's offset from UTC at `t`, in seconds.
    pub(super) fn offset_seconds(self, t: DateTime<Utc>, cache: &OffsetCache) -> i64 {
        match self {
            Zone::Utc => 0,
            Zone::Fixed(offset) => i64::from(offset.local_minus_utc()),
            Zone::Named(tz) => cache.get_or_compute(t.timestamp(), || {
                use chrono::{Offset, TimeZone};
                i64::from(tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc())
            }),
        }
    }

    pub(super) fn field(self, t: DateTime<Utc>, field: TimeField, cache: &OffsetCache) -> i64 {
        let offset = self.offset_seconds(t, cache);
        let local_seconds = t.timestamp() + offset;
        let second_of_day = local_seconds.rem_euclid(86_400);
        match field {
            TimeField::Hours => second_of_day / 3600,
            TimeField::Minutes => second_of_day % 3600 / 60,
            TimeField::Seconds => second_of_day % 60,
            TimeField::Milliseconds => i64::from(t.timestamp_subsec_millis()),
            // 1970-01-01 was a Thursday (day 4, counting Sunday as 0).
            TimeField::DayOfWeek => (local_seconds.div_euclid(86_400) + 4).rem_euclid(7),
            _ => match DateTime::from_timestamp(local_seconds, t.timestamp_subsec_nanos()) {
                Some(local) => field.of(&local.naive_utc()),
                None => 0,
            },
        }
    }
}
