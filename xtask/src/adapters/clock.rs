//! UTC time through `jiff`: now, as RFC 3339 or as the compact
//! `YYYYMMDDHHMMSS` used in migration and backup names, and back.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// An instant, printed in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc(Timestamp);

pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Utc {
    pub fn now() -> Utc {
        Utc(Timestamp::now())
    }

    /// Seconds since the epoch; out of jiff's range (beyond year 9999)
    /// clamps to its limits.
    pub fn from_unix(secs: i64) -> Utc {
        Utc(Timestamp::from_second(secs).unwrap_or(if secs < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        }))
    }

    pub fn unix(&self) -> i64 {
        self.0.as_second()
    }

    pub fn unix_ms(&self) -> i64 {
        self.0.as_millisecond()
    }

    /// `2025-01-27T00:00:00.000Z`
    pub fn rfc3339(&self) -> String {
        self.0.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }

    /// `20250127000000`, as in Prisma's migration folder names.
    pub fn compact(&self) -> String {
        self.0.strftime("%Y%m%d%H%M%S").to_string()
    }

    /// Parse `YYYYMMDDHHMMSS` (a real date and time, in UTC).
    pub fn parse_compact(s: &str) -> Option<Utc> {
        if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let dt = DateTime::strptime("%Y%m%d%H%M%S", s).ok()?;
        Some(Utc(dt.to_zoned(TimeZone::UTC).ok()?.timestamp()))
    }
}

/// Seconds since the epoch of a date-time with its offset, as PostgreSQL
/// reads one (`2026-11-29 14:01:59+00`, `2026-11-29T14:01:59.5Z`), or None.
pub fn parse_instant(s: &str) -> Option<i64> {
    parse_instant_ms(s).map(|ms| ms.div_euclid(1000))
}

/// `parse_instant` to the millisecond.
pub fn parse_instant_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let padded = match s.rfind(['+', '-']) {
        // `+00` / `-05`: the minutes PostgreSQL lets one leave out.
        Some(i) if s.len() - i == 3 && s[..i].contains(':') => format!("{s}:00"),
        _ => s.to_string(),
    };
    padded.parse::<Timestamp>().ok().map(|t| t.as_millisecond())
}

/// Seconds since the epoch of an RFC 3339 date-time, or None.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    s.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// The wall-clock time now in time zone `zone` (an IANA name from the
/// system's zoneinfo, `UTC`, or a fixed offset `+01:00`), as minutes since
/// midnight, with its `HH:MM` for messages.
pub fn minutes_now_in(zone: &str) -> Result<(u32, String), String> {
    let tz = if zone.eq_ignore_ascii_case("utc") {
        TimeZone::UTC
    } else if zone.starts_with(['+', '-']) {
        let bad = || format!("`{zone}` is not an offset like +01:00");
        let (h, m) = zone[1..].split_once(':').ok_or_else(bad)?;
        let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let offset = jiff::tz::Offset::from_seconds(sign * (h * 3600 + m * 60))
            .map_err(|e| format!("{}: {e}", bad()))?;
        TimeZone::fixed(offset)
    } else {
        TimeZone::get(zone).map_err(|e| {
            format!("time zone `{zone}` is not in this machine's /usr/share/zoneinfo (install tzdata): {e}")
        })?
    };
    let now = Timestamp::now().to_zoned(tz);
    let (h, m) = (now.hour() as u32, now.minute() as u32);
    Ok((h * 60 + m, format!("{h:02}:{m:02}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants() {
        assert_eq!(parse_instant("1970-01-01 00:01:00+00"), Some(60));
        assert_eq!(parse_instant("1970-01-01T01:01:00+01:00"), Some(60));
        assert_eq!(parse_instant("1970-01-01 00:01:00.5Z"), Some(60));
        assert_eq!(parse_instant("1970-01-01 00:01:00"), None);
    }

    #[test]
    fn wall_clock_in_a_zone() {
        let (utc, hhmm) = minutes_now_in("UTC").unwrap();
        assert!(utc < 24 * 60 && hhmm.len() == 5);
        let (plus, _) = minutes_now_in("+01:30").unwrap();
        assert_eq!(plus, (utc + 90) % (24 * 60));
        assert!(minutes_now_in("Europe/Berlin").is_ok(), "tzdata installed");
        assert!(minutes_now_in("Mars/Olympus").is_err());
        assert!(minutes_now_in("+1").is_err());
    }

    #[test]
    fn round_trips() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-01-27T00:00:00.000Z"), Some(1737936000));
        assert_eq!(parse_rfc3339("2025-01-27T01:00:00+01:00"), Some(1737936000));
        // Docker's timestamps: nanoseconds.
        assert_eq!(
            parse_rfc3339("2025-01-27T00:00:00.123456789Z"),
            Some(1737936000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2025-13-27T00:00:00Z"), None);
        assert_eq!(
            Utc::from_unix(1737936000).rfc3339(),
            "2025-01-27T00:00:00.000Z"
        );
        assert_eq!(Utc::from_unix(1737936000).compact(), "20250127000000");
        assert_eq!(
            Utc::parse_compact("20250127000000").map(|u| u.unix()),
            Some(1737936000)
        );
        assert_eq!(Utc::parse_compact("20250230000000"), None);
        for secs in [0, 951782400, 1709164800, 4102444800] {
            assert_eq!(Utc::from_unix(secs).unix(), secs);
        }
    }
}
