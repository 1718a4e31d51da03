//! UTC time without a date crate: now, as RFC 3339 or as the compact
//! `YYYYMMDDHHMMSS` used in migration and backup names, and back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds and milliseconds since the epoch, split into a civil UTC date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    pub millis: i64,
}

pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Utc {
    pub fn now() -> Utc {
        Utc::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Utc {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let mut u = Utc::from_unix(d.as_secs() as i64);
        u.millis = d.subsec_millis() as i64;
        u
    }

    pub fn from_unix(secs: i64) -> Utc {
        let days = secs.div_euclid(86400);
        let rem = secs.rem_euclid(86400);
        // Civil from days (Howard Hinnant's algorithm).
        let z = days + 719468;
        let era = z.div_euclid(146097);
        let doe = z - era * 146097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            millis: 0,
        }
    }

    pub fn unix(&self) -> i64 {
        let y = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = if self.month > 2 {
            self.month - 3
        } else {
            self.month + 9
        };
        let doy = (153 * mp + 2) / 5 + self.day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        (era * 146097 + doe - 719468) * 86400 + self.hour * 3600 + self.minute * 60 + self.second
    }

    /// `2025-01-27T00:00:00.000Z`
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }

    /// `20250127000000`, as in Prisma's migration folder names.
    pub fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// Parse `YYYYMMDDHHMMSS`.
    pub fn parse_compact(s: &str) -> Option<Utc> {
        if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().ok();
        let u = Utc {
            year: n(0..4)?,
            month: n(4..6)?,
            day: n(6..8)?,
            hour: n(8..10)?,
            minute: n(10..12)?,
            second: n(12..14)?,
            millis: 0,
        };
        (Utc::from_unix(u.unix()) == u).then_some(u)
    }
}

/// Seconds since the epoch of an RFC 3339 date-time, or None.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let u = Utc {
        year: num(0..4)?,
        month: num(5..7)?,
        day: num(8..10)?,
        hour: num(11..13)?,
        minute: num(14..16)?,
        second: num(17..19)?,
        millis: 0,
    };
    if !(1..=12).contains(&u.month)
        || !(1..=31).contains(&u.day)
        || u.hour > 23
        || u.minute > 59
        || u.second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let o = rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    Some(u.unix() - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-01-27T00:00:00.000Z"), Some(1737936000));
        assert_eq!(parse_rfc3339("2025-01-27T01:00:00+01:00"), Some(1737936000));
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
