//! Calendar arithmetic on UTC microseconds for the programme's time rules (days after
//! earning, end of month or year, rolling windows of months). Proleptic Gregorian, UTC;
//! pure integer arithmetic (Howard Hinnant's civil-date algorithms), no clock.

/// Microseconds in a day.
pub const DAY_US: i64 = 86_400_000_000;

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month 1..=12, day 1..=31) of a day number.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The civil date of a time.
pub fn date_of(us: i64) -> (i64, u32, u32) {
    civil_from_days(us.div_euclid(DAY_US))
}

/// Midnight UTC of a civil date, in microseconds.
pub fn midnight(year: i64, month: u32, day: u32) -> i64 {
    days_from_civil(year, month, day).saturating_mul(DAY_US)
}

/// `us` plus whole days (saturating).
pub fn add_days(us: i64, days: u32) -> i64 {
    us.saturating_add(i64::from(days).saturating_mul(DAY_US))
}

/// The first instant of the month after the one containing `us`.
pub fn start_of_next_month(us: i64) -> i64 {
    let (y, m, _) = date_of(us);
    if m == 12 {
        midnight(y + 1, 1, 1)
    } else {
        midnight(y, m + 1, 1)
    }
}

/// The first instant of the year after the one containing `us`.
pub fn start_of_next_year(us: i64) -> i64 {
    let (y, _, _) = date_of(us);
    midnight(y + 1, 1, 1)
}

/// The first instant of the year containing `us`.
pub fn start_of_year(us: i64) -> i64 {
    let (y, _, _) = date_of(us);
    midnight(y, 1, 1)
}

/// The first instant of the month containing `us`.
pub fn start_of_month(us: i64) -> i64 {
    let (y, m, _) = date_of(us);
    midnight(y, m, 1)
}

/// `us` moved back by `months` calendar months (the day clamped to the month's length,
/// the time of day kept): the start of a rolling window.
pub fn months_before(us: i64, months: u32) -> i64 {
    let day_start = us.div_euclid(DAY_US) * DAY_US;
    let time_of_day = us - day_start;
    let (y, m, d) = date_of(us);
    let total = y * 12 + i64::from(m) - 1 - i64::from(months);
    let (ny, nm) = (total.div_euclid(12), (total.rem_euclid(12) + 1) as u32);
    let last = days_in_month(ny, nm);
    midnight(ny, nm, d.min(last)) + time_of_day
}

/// Days in a month.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 3, 1), 19_783);
        for days in [-800_000, -1, 0, 1, 19_783, 60_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(
            start_of_next_month(midnight(2024, 12, 31)),
            midnight(2025, 1, 1)
        );
        assert_eq!(
            start_of_next_year(midnight(2024, 6, 30)),
            midnight(2025, 1, 1)
        );
        assert_eq!(
            months_before(midnight(2024, 3, 31), 1),
            midnight(2024, 2, 29)
        );
        assert_eq!(
            months_before(midnight(2024, 3, 31), 12),
            midnight(2023, 3, 31)
        );
    }
}
