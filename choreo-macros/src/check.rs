//! Rules the compiler cannot check by itself.

use std::time::Duration;

/// Checks an event name: two or more dot-separated lower kebab-case segments.
pub(crate) fn event_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    let segments: Vec<&str> = name.split('.').collect();
    if segments.len() < 2 {
        return Err("it has no domain segment".into());
    }
    for segment in segments {
        kebab(segment).map_err(|why| {
            if segment.is_empty() {
                "it has an empty segment".to_owned()
            } else {
                format!("segment `{segment}` {why}")
            }
        })?;
    }
    Ok(())
}

/// Checks one lower kebab-case segment.
pub(crate) fn kebab(segment: &str) -> Result<(), &'static str> {
    let Some(first) = segment.chars().next() else {
        return Err("is empty");
    };
    if !first.is_ascii_lowercase() {
        return Err("must start with a lowercase letter");
    }
    if segment.ends_with('-') || segment.contains("--") {
        return Err("has a dash out of place");
    }
    if !segment
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("may hold only lowercase letters, digits and dashes");
    }
    Ok(())
}

/// Parses a duration such as `250ms`, `5s`, `2m` or `1h`.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err("it does not start with a whole number".into());
    }
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{number}` is too large"))?;
    let seconds = |factor: u64| number.checked_mul(factor).map(Duration::from_secs);
    let duration = match unit.trim_start() {
        "" => return Err("it has no unit".into()),
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => seconds(60),
        "h" => seconds(3600),
        other => return Err(format!("`{other}` is not a unit")),
    };
    if unit.starts_with(char::is_whitespace) {
        return Err("it has a space between the number and the unit".into());
    }
    let duration = duration.ok_or_else(|| format!("`{number}{unit}` is too large"))?;
    if duration.is_zero() {
        return Err("a timeout must be longer than zero".into());
    }
    Ok(duration)
}

/// The default handler name: the function's name in kebab-case.
pub(crate) fn kebab_case(ident: &str) -> String {
    ident
        .trim_start_matches("r#")
        .trim_matches('_')
        .replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(event_name("orders.order-placed").is_ok());
        assert!(event_name("a.b.c2").is_ok());
        assert!(event_name("orders").is_err());
        assert!(event_name("Orders.placed").is_err());
        assert!(event_name("orders..placed").is_err());
        assert!(event_name("orders.order_placed").is_err());
        assert!(event_name("orders.-placed").is_err());
        assert!(event_name("orders.placed-").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(duration("5").is_err());
        assert!(duration("5 days").is_err());
        assert!(duration("0s").is_err());
        assert!(duration("5 s").is_err());
        assert!(duration("s").is_err());
        assert!(duration("").is_err());
        assert!(duration("99999999999999999999s").is_err());
        assert_eq!(
            duration("30 seconds"),
            Err("`seconds` is not a unit".to_owned())
        );
    }

    #[test]
    fn handler_names() {
        assert_eq!(kebab_case("charge_card"), "charge-card");
        assert_eq!(kebab_case("r#match"), "match");
    }
}
