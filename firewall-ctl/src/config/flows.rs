//! `track_outbound` and `[flows]`: which flows the host starts are tracked,
//! so their replies pass, and for how long.

use std::time::Duration;

use firewall_common::{flow::FlowConfig, limits::DEFAULT_MAX_FLOWS};
use serde::Deserialize;
use toml::Spanned;

/// The flow table's settings, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSettings {
    /// Idle timeout of a TCP connection.
    pub tcp_timeout: Duration,
    /// How long a TCP connection lives after both sides sent a FIN, or
    /// either a RST: for the last ACKs and retransmissions.
    pub tcp_close_timeout: Duration,
    pub udp_timeout: Duration,
    /// Idle timeout of an ICMP or ICMPv6 echo (ping).
    pub icmp_timeout: Duration,
    /// Entries of the flow table; past it the least recently used flow is
    /// evicted (and counted).
    pub max_flows: u32,
}

/// The defaults of conntrack where it has one (TCP established: 5 days;
/// ICMP: 30 s), shorter where an edge host needs no more.
impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            tcp_timeout: Duration::from_secs(5 * 24 * 3600),
            tcp_close_timeout: Duration::from_secs(30),
            udp_timeout: Duration::from_secs(60),
            icmp_timeout: Duration::from_secs(30),
            max_flows: DEFAULT_MAX_FLOWS,
        }
    }
}

/// Smallest and largest timeouts: below a second a reply on a slow path
/// is lost; past 30 days an entry outlives any connection worth keeping.
const MIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Smallest and largest table: about 130 bytes of kernel memory per entry,
/// so the largest takes about 550 MB.
pub const MIN_FLOWS: u32 = 64;
pub const MAX_FLOWS: u32 = 1 << 22;

/// `[flows]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlows {
    tcp_timeout: Option<Spanned<String>>,
    tcp_close_timeout: Option<Spanned<String>>,
    udp_timeout: Option<Spanned<String>>,
    icmp_timeout: Option<Spanned<String>>,
    max_flows: Option<Spanned<i64>>,
}

impl FlowSettings {
    /// What the data plane reads (`FLOW_CONFIG`).
    pub fn data_plane(&self, track_outbound: bool) -> FlowConfig {
        let nanos = |duration: Duration| u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        FlowConfig {
            enabled: u32::from(track_outbound),
            pad: 0,
            tcp_timeout_ns: nanos(self.tcp_timeout),
            tcp_close_timeout_ns: nanos(self.tcp_close_timeout),
            udp_timeout_ns: nanos(self.udp_timeout),
            icmp_timeout_ns: nanos(self.icmp_timeout),
        }
    }
}

impl super::Validator<'_> {
    pub(super) fn flows(&mut self, raw: RawFlows) -> FlowSettings {
        let defaults = FlowSettings::default();
        let max_flows = match raw.max_flows {
            None => defaults.max_flows,
            Some(value) => match u32::try_from(*value.get_ref()) {
                Ok(flows) if (MIN_FLOWS..=MAX_FLOWS).contains(&flows) => flows,
                _ => {
                    self.problem(
                        &value,
                        format!(
                            "`flows.max_flows = {}` is out of range; use {MIN_FLOWS} to {MAX_FLOWS} (default {})",
                            value.get_ref(),
                            defaults.max_flows
                        ),
                    );
                    defaults.max_flows
                }
            },
        };
        FlowSettings {
            tcp_timeout: self.timeout("tcp_timeout", raw.tcp_timeout, defaults.tcp_timeout),
            tcp_close_timeout: self.timeout(
                "tcp_close_timeout",
                raw.tcp_close_timeout,
                defaults.tcp_close_timeout,
            ),
            udp_timeout: self.timeout("udp_timeout", raw.udp_timeout, defaults.udp_timeout),
            icmp_timeout: self.timeout("icmp_timeout", raw.icmp_timeout, defaults.icmp_timeout),
            max_flows,
        }
    }

    fn timeout(&mut self, key: &str, text: Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(text) = text else {
            return default;
        };
        match humantime::parse_duration(text.get_ref()) {
            Ok(duration) if (MIN_TIMEOUT..=MAX_TIMEOUT).contains(&duration) => duration,
            parsed => {
                let why = match parsed {
                    Ok(_) => "is out of range".to_string(),
                    Err(err) => format!("is not a duration ({err})"),
                };
                self.problem(
                    &text,
                    format!(
                        "`flows.{key} = \"{}\"` {why}; write a duration from 1s to 30days, e.g. \"{}\" (the default)",
                        text.get_ref(),
                        humantime::format_duration(default)
                    ),
                );
                default
            }
        }
    }
}
