//! Settings from flags and `HERALD_*` variables, shared by every herald binary: the
//! environment is read through [`Env`] so tests pass a map instead of mutating the process
//! environment; a [`Resolver`] reads each setting from its flag or its variable, parses it and
//! collects every problem, so a binary reports them all on one line ([`ConfigError`], exit 64).
//! The value parsers (durations, sizes, counts, names) are here too; each caller checks the
//! range that applies ([`in_range`], [`crate::limits`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::limits::DurationRange;

/// Where environment variables come from.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// Bad configuration: every problem, each naming its setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

/// Reads one setting from its flag or its variable and parses it, collecting errors.
pub struct Resolver<'a> {
    env: &'a dyn Env,
    errors: Vec<String>,
}

impl<'a> Resolver<'a> {
    pub fn new(env: &'a dyn Env) -> Self {
        Resolver {
            env,
            errors: Vec::new(),
        }
    }

    /// The raw value and where it came from (for the error message).
    pub fn raw(&self, flag: &str, cli: &Option<String>) -> Option<(String, String)> {
        match cli {
            Some(v) => Some((v.clone(), format!("--{flag}"))),
            None => self.var(flag),
        }
    }

    fn var(&self, flag: &str) -> Option<(String, String)> {
        let var = format!("HERALD_{}", flag.to_ascii_uppercase().replace('-', "_"));
        self.env.var(&var).map(|v| (v, var))
    }

    /// [`Resolver::get`] for a setting renamed from `old` (whose flag clap takes as an alias):
    /// the old variable is read when neither the flag nor the new variable is set.
    pub fn get_renamed<T>(
        &mut self,
        flag: &str,
        old: &str,
        cli: &Option<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (value, origin) = self.raw(flag, cli).or_else(|| self.var(old))?;
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(problem) => {
                self.errors.push(format!("{origin}={value:?}: {problem}"));
                None
            }
        }
    }

    pub fn get<T>(
        &mut self,
        flag: &str,
        cli: &Option<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (value, origin) = self.raw(flag, cli)?;
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(problem) => {
                self.errors.push(format!("{origin}={value:?}: {problem}"));
                None
            }
        }
    }

    pub fn fail(&mut self, problem: String) {
        self.errors.push(problem);
    }

    pub fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.errors))
        }
    }
}

/// Reads a text file of at most `max` bytes (the error says so past it).
pub fn read_capped(path: &str, max: u64) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(text)
}

/// A NATS credentials file, read now so a missing or unreadable Secret mount is a configuration
/// error with the path, not a connect error later.
pub fn parse_creds(v: &str) -> Result<String, String> {
    match read_capped(v, 64 << 10) {
        Ok(text) if text.contains("-----BEGIN NATS USER JWT-----") => Ok(v.to_owned()),
        Ok(_) => Err("is not a NATS credentials file (no user JWT block)".into()),
        Err(e) => Err(format!("cannot read: {e}")),
    }
}

pub fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| "must be an IP address and port, such as 127.0.0.1:8250".into())
}

/// An app id or a namespace: non-empty, no whitespace or control characters, at most `max`
/// bytes.
pub fn parse_name(v: &str, max: usize) -> Result<String, String> {
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("must be non-empty, without whitespace".into())
    } else if v.len() > max {
        Err(format!("is {} bytes long; the limit is {max}", v.len()))
    } else {
        Ok(v.to_owned())
    }
}

/// A stream name as the sidecar and the controller both accept it.
pub fn parse_stream_name(v: &str) -> Result<String, String> {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(v.to_owned())
    } else {
        Err("a stream name is letters, digits, `_` and `-`".into())
    }
}

pub fn parse_count(v: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// `500ms`, `5s`, `2m`, `1h`, `7d`, or plain seconds. Callers check the range that applies
/// ([`in_range`]): this only refuses what is not a duration or does not fit one.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let err = || "must be a duration such as 500ms, 5s, 2m, 1h or 7d".to_string();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

/// A parser of durations within `range`: the error names the range.
pub fn in_range(range: DurationRange) -> impl Fn(&str) -> Result<Duration, String> {
    move |v| parse_duration(v).and_then(|d| range.check(d))
}

pub fn parse_positive_duration(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

/// `1048576`, `512KiB`, `1MiB` (also `KB`/`MB` as powers of 1000).
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let err = || "must be a size such as 1048576, 512KiB or 1MiB".to_string();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(err()),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err("must be more than zero and fit in 64 bits".into()),
        Some(b) => Ok(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert!(parse_bytes("0").is_err());
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("9000000000000000000000s").is_err());
        let timeout = in_range(crate::limits::DELIVERY_DURATION);
        assert_eq!(
            timeout("9000000000000000000s"),
            Err("must be from 1ms to 24h".into())
        );
        assert_eq!(timeout("0s"), Err("must be from 1ms to 24h".into()));
        assert_eq!(timeout("24h"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn a_renamed_setting_reads_its_old_variable_and_the_new_wins() {
        let env: HashMap<String, String> =
            HashMap::from([("HERALD_OLD_NAME".to_string(), "old".to_string())]);
        let mut r = Resolver::new(&env);
        let v = r.get_renamed("new-name", "old-name", &None, |v| Ok(v.to_owned()));
        assert_eq!(v.as_deref(), Some("old"));
        let env: HashMap<String, String> = HashMap::from([
            ("HERALD_OLD_NAME".to_string(), "old".to_string()),
            ("HERALD_NEW_NAME".to_string(), "new".to_string()),
        ]);
        let mut r = Resolver::new(&env);
        let v = r.get_renamed("new-name", "old-name", &None, |v| Ok(v.to_owned()));
        assert_eq!(v.as_deref(), Some("new"));
        let mut r = Resolver::new(&env);
        let e = r.get_renamed("new-name", "old-name", &None, |_| {
            Err::<(), _>("bad".into())
        });
        assert!(e.is_none());
        assert_eq!(r.finish().unwrap_err().0, ["HERALD_NEW_NAME=\"new\": bad"]);
    }
}
