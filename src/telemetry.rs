//! Log setup (tracing-subscriber is used nowhere else).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. `level` is a level name or any `tracing` directive
/// (`info,kvs::sync=debug`); `RUST_LOG` is not consulted so the config stays the truth.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let filter = parse_filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|error| format!("cannot install the logger: {error}"))
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Accepts a comma-separated list of `level` or `target=level` directives and nothing
/// else: `EnvFilter` alone takes almost any word as a target name, so a typo such as
/// `infp` would silently log nothing.
fn parse_filter(text: &str) -> Result<EnvFilter, String> {
    let complaint = || {
        format!(
            "log_level: {text:?} is not a level ({}) or a list of target=level directives",
            LEVELS.join(", ")
        )
    };
    for directive in text.split(',') {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
            return Err(complaint());
        }
    }
    EnvFilter::try_new(text).map_err(|_| complaint())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_levels_and_directives_only() {
        for good in ["info", "DEBUG", "warn,kvs::store=trace", "off"] {
            assert!(parse_filter(good).is_ok(), "{good}");
        }
        for bad in ["infp", "loud!!", "", "kvs=verbose", "info,"] {
            assert!(parse_filter(bad).unwrap_err().starts_with("log_level"), "{bad}");
        }
    }
}

/// Rate-limits a repeated warning: each `kind` logs at most once per [`Throttle::EVERY`],
/// and the next line says how many were held back. A flood of bad requests then costs a
/// few log lines, not a full disk.
#[derive(Default)]
pub struct Throttle {
    kinds: std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl Throttle {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Calls `log(held_back)` unless `kind` logged less than [`Throttle::EVERY`] ago.
    pub fn warn(&self, kind: &'static str, log: impl FnOnce(u64)) {
        let now = std::time::Instant::now();
        let mut kinds = self.kinds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match kinds.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < Self::EVERY => *held += 1,
            Some((last, held)) => {
                let count = std::mem::take(held);
                *last = now;
                drop(kinds);
                log(count);
            }
            None => {
                kinds.insert(kind, (now, 0));
                drop(kinds);
                log(0);
            }
        }
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::Throttle;

    #[test]
    fn a_repeated_warning_logs_once_per_period_per_kind() {
        let throttle = Throttle::default();
        let mut logged = Vec::new();
        for _ in 0..5 {
            throttle.warn("a", |held| logged.push(("a", held)));
        }
        throttle.warn("b", |held| logged.push(("b", held)));
        assert_eq!(logged, vec![("a", 0), ("b", 0)]);
    }
}
