//! The limits every listener of a herald process takes from its flags: see
//! [`herald_core::limits`] and docs/SECURITY.md.

use std::time::Duration;

use herald_core::limits;
use herald_core::settings::{Resolver, in_range, parse_count};

/// What a client of a listener may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// Open connections of the publish API (or the webhook, in the injector).
    pub max_connections: usize,
    pub admin_max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout: limits::DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: limits::DEFAULT_BODY_READ_TIMEOUT,
            max_connections: limits::DEFAULT_PUBLISH_MAX_CONNECTIONS,
            admin_max_connections: limits::DEFAULT_ADMIN_MAX_CONNECTIONS,
        }
    }
}

/// The flags of [`ListenerLimits`], shared by `herald` and `herald-controlplane`.
pub struct ListenerArgs<'a> {
    pub header_read_timeout: &'a Option<String>,
    pub body_read_timeout: &'a Option<String>,
    pub max_connections: (&'static str, &'a Option<String>, usize),
    pub admin_max_connections: &'a Option<String>,
}

impl ListenerLimits {
    /// Reads the listener flags, each checked against its range.
    pub fn resolve(r: &mut Resolver<'_>, args: ListenerArgs<'_>) -> ListenerLimits {
        let (lo, hi) = limits::MAX_CONNECTIONS_RANGE;
        let d = ListenerLimits::default();
        let (flag, cli, default) = args.max_connections;
        ListenerLimits {
            header_read_timeout: r
                .get(
                    "header-read-timeout",
                    args.header_read_timeout,
                    in_range(limits::READ_TIMEOUT_RANGE),
                )
                .unwrap_or(d.header_read_timeout),
            body_read_timeout: r
                .get(
                    "body-read-timeout",
                    args.body_read_timeout,
                    in_range(limits::READ_TIMEOUT_RANGE),
                )
                .unwrap_or(d.body_read_timeout),
            max_connections: r
                .get(flag, cli, |v| parse_count(v, lo, hi))
                .unwrap_or(default),
            admin_max_connections: r
                .get("admin-max-connections", args.admin_max_connections, |v| {
                    parse_count(v, lo, hi)
                })
                .unwrap_or(d.admin_max_connections),
        }
    }
}
