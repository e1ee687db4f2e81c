//! `firewall-ctl list` and `firewall-ctl explain`: the effective allowlist
//! with each entry's origin, and why a packet would pass or drop.
//!
//! `explain` asks the same decision function the XDP program runs
//! ([`firewall_common::verdict::decide`]) on the compiled tables, then looks
//! up which entry of the winning rule holds the source.

use std::net::IpAddr;

use firewall_common::{
    reasons::Reason,
    verdict::{Packet, decide},
    wire::Source,
};

use super::CompiledPolicy;
use crate::{
    api::{Admission, EntryRef, ExplainReport, ExposingRule, ListedEntry, mode_name},
    config::{Config, IpPrefix, PortRange},
    entries::{Origin, RuntimeEntries},
    feeds::FeedLists,
    text::escape_controls,
};

/// Every effective entry, rule by rule in config order; within a rule,
/// config entries first, then feed entries (feed by feed), then runtime
/// entries, each by prefix. An iterator: a report of half a million
/// entries builds its rows from it without holding them all twice.
pub fn list<'a>(
    config: &'a Config,
    runtime: &'a RuntimeEntries,
    feeds: &'a FeedLists,
    rule: Option<&'a str>,
) -> impl Iterator<Item = ListedEntry> + 'a {
    config
        .rules
        .iter()
        .filter(move |candidate| rule.is_none_or(|name| candidate.name == name))
        .flat_map(move |rule| {
            let from_config = rule
                .sources
                .iter()
                .map(move |prefix| plain(&rule.name, prefix, Origin::Config));
            let from_feeds = rule.feeds.iter().flat_map(move |feed| {
                feeds
                    .get(feed)
                    .into_iter()
                    .flat_map(|list| &list.prefixes)
                    .map(move |prefix| plain(&rule.name, *prefix, Origin::Feed(feed.clone())))
            });
            let from_cli = runtime
                .values()
                .filter(move |entry| entry.rule == rule.name)
                .map(from_cli);
            from_config.chain(from_feeds).chain(from_cli)
        })
}

/// Every entry (rule and prefix) once, with all its listings in the order
/// of [`list`], where its first listing is: a row of `stats --entries`. Each
/// entry's other listings are looked up (each origin's list is sorted), so
/// nothing of the rows before is held.
pub fn listings<'a>(
    config: &'a Config,
    runtime: &'a RuntimeEntries,
    feeds: &'a FeedLists,
    rule: Option<&'a str>,
) -> impl Iterator<Item = Vec<ListedEntry>> + 'a {
    list(config, runtime, feeds, rule).filter_map(move |entry| {
        let (_, rule) = config.rule(&entry.rule)?;
        let mut all = Vec::with_capacity(1);
        if rule.sources.contains(&entry.prefix) {
            all.push(plain(&rule.name, entry.prefix, Origin::Config));
        }
        for feed in &rule.feeds {
            if feeds
                .get(feed)
                .is_some_and(|list| list.lists(&entry.prefix))
            {
                all.push(plain(&rule.name, entry.prefix, Origin::Feed(feed.clone())));
            }
        }
        // Listed first elsewhere: that listing's row has this one.
        let first_listed = all.first().is_none_or(|first| first.origin == entry.origin);
        if entry.origin == Origin::Cli {
            all.push(entry);
        } else if let Some(cli) = runtime.get(&(rule.name.clone(), entry.prefix)) {
            all.push(from_cli(cli));
        }
        first_listed.then_some(all)
    })
}

/// A config or feed listing of `prefix` in `rule`.
fn plain(rule: &str, prefix: IpPrefix, origin: Origin) -> ListedEntry {
    ListedEntry {
        rule: rule.to_string(),
        prefix,
        origin,
        comment: None,
        added_by: None,
        added_at: None,
        expires_at: None,
    }
}

/// The listing of a runtime entry.
fn from_cli(entry: &crate::entries::RuntimeEntry) -> ListedEntry {
    ListedEntry {
        rule: entry.rule.clone(),
        prefix: entry.prefix,
        origin: Origin::Cli,
        comment: entry.comment.clone(),
        added_by: Some(entry.added_by.clone()),
        added_at: Some(entry.added_at),
        expires_at: entry.expires_at,
    }
}

/// How many near entries `explain` shows per rule.
pub const NEAREST: usize = 3;

/// Parses `explain`'s arguments: an address and one port (`443`,
/// `tcp/443`, `udp/4500`), with the config's port syntax.
pub fn parse_query(source: &str, port: &str) -> Result<(IpAddr, PortRange), String> {
    let address: IpAddr = source.parse().map_err(|_| {
        format!(
            "`{}` is not an IP address; `explain` takes one address, e.g. `203.0.113.7` or `2001:db8::7`",
            escape_controls(source)
        )
    })?;
    Ok((address, parse_port(port)?))
}

/// Parses the one port `explain` asks about: `443`, `tcp/443`, `udp/4500`.
pub fn parse_port(port: &str) -> Result<PortRange, String> {
    let range: PortRange = port.parse().map_err(|err| format!("{err}"))?;
    if range.first != range.last {
        return Err(format!(
            "`{range}` is a range; `explain` takes one port, e.g. `tcp/443`"
        ));
    }
    Ok(range)
}

/// The rules exposing `port`, in config order.
pub fn exposing_rules(config: &Config, port: PortRange) -> Vec<&str> {
    config
        .rules
        .iter()
        .filter(|rule| {
            rule.ports.iter().any(|range| {
                range.protocol == port.protocol && (range.first..=range.last).contains(&port.first)
            })
        })
        .map(|rule| rule.name.as_str())
        .collect()
}

/// Number of leading bits `prefix`'s address shares with `address`
/// (`None` across families).
fn shared_bits(prefix: &IpPrefix, address: IpAddr) -> Option<u32> {
    let (bits, width) = prefix.bits();
    let address = match address {
        IpAddr::V4(v4) if prefix.is_v4() => u32::from(v4) as u128,
        IpAddr::V6(v6) if !prefix.is_v4() => u128::from(v6),
        _ => return None,
    };
    let unused = 128 - u32::from(width);
    Some(
        ((bits ^ address) << unused)
            .leading_zeros()
            .min(u32::from(prefix.len())),
    )
}

/// Explains a packet from `source` to `port` under `policy`, compiled from
/// `config`, `runtime` and `feeds`.
pub fn explain(
    config: &Config,
    runtime: &RuntimeEntries,
    feeds: &FeedLists,
    policy: &CompiledPolicy,
    source: IpAddr,
    port: PortRange,
) -> ExplainReport {
    debug_assert_eq!(port.first, port.last, "explain takes one port");
    let key = firewall_common::maps::PortKey::new(port.protocol, port.first);
    let packet = Packet::Transport {
        source: match source {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => Source::V6(v6.octets()),
        },
        port: key,
    };
    let verdict = decide(packet, policy);
    let entries: Vec<ListedEntry> = list(config, runtime, feeds, None).collect();
    let holding = |rule: &str| {
        entries
            .iter()
            .filter(|entry| entry.rule == rule && entry.prefix.contains(source))
            .max_by_key(|entry| (entry.prefix.len(), std::cmp::Reverse(&entry.origin)))
            .map(|entry| EntryRef {
                prefix: entry.prefix,
                origin: entry.origin.clone(),
            })
    };
    let exposing = exposing_rules(config, port);
    let admitted_by: Vec<Admission> = exposing
        .iter()
        .filter_map(|rule| {
            Some(Admission {
                rule: rule.to_string(),
                entry: holding(rule)?,
            })
        })
        .collect();
    let exposing_rules = if verdict.reason == Reason::NotAllowlisted {
        exposing
            .iter()
            .map(|rule| {
                let mut near: Vec<(u32, &IpPrefix, Origin)> = entries
                    .iter()
                    .filter(|entry| entry.rule == *rule)
                    .filter_map(|entry| {
                        Some((
                            shared_bits(&entry.prefix, source)?,
                            &entry.prefix,
                            entry.origin.clone(),
                        ))
                    })
                    .collect();
                near.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
                ExposingRule {
                    rule: rule.to_string(),
                    nearest: near
                        .into_iter()
                        .take(NEAREST)
                        .map(|(_, prefix, origin)| EntryRef {
                            prefix: *prefix,
                            origin,
                        })
                        .collect(),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let allowed = verdict.reason == Reason::Allowed;
    let rule = allowed.then(|| policy.rule_names[verdict.rule as usize].clone());
    ExplainReport {
        source,
        port: port.to_string(),
        verdict: if allowed { "pass" } else { "drop" }.to_string(),
        reason: verdict.reason.name().to_string(),
        mode: mode_name(config.enforce),
        entry: rule.as_deref().and_then(holding),
        rule,
        admitted_by,
        exposing_rules,
        feeds_not_considered: Vec::new(),
        feeds_note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::tests::parse as parse_config, policy::compile};

    const OVERLAP: &str = r#"
interfaces = ["eth0"]

[[rules]]
name = "vendor"
ports = ["tcp/443"]
sources = ["203.0.113.0/24", "192.0.2.0/28"]

[[rules]]
name = "office-ssh"
ports = ["tcp/22", "tcp/443"]
sources = ["203.0.113.64/26", "198.51.100.0/24"]
"#;

    fn runtime(entries: &[(&str, &str)]) -> RuntimeEntries {
        let mut runtime = crate::entries::tests::runtime(entries);
        for entry in runtime.values_mut() {
            entry.comment = Some("contractor".to_string());
        }
        runtime
    }

    fn run(runtime: &RuntimeEntries, source: &str, port: &str) -> ExplainReport {
        let config = parse_config(OVERLAP).unwrap();
        let policy = compile(&config, runtime).unwrap();
        explain(
            &config,
            runtime,
            &FeedLists::new(),
            &policy,
            source.parse().unwrap(),
            port.parse().unwrap(),
        )
    }

    fn entry(prefix: &str, origin: Origin) -> Option<EntryRef> {
        Some(EntryRef {
            prefix: prefix.parse().unwrap(),
            origin,
        })
    }

    #[test]
    fn the_overlap_example_names_rule_and_entry() {
        let none = RuntimeEntries::new();
        let inner_ssh = run(&none, "203.0.113.70", "tcp/22");
        assert_eq!(inner_ssh.verdict, "pass");
        assert_eq!(inner_ssh.rule.as_deref(), Some("office-ssh"));
        assert_eq!(inner_ssh.entry, entry("203.0.113.64/26", Origin::Config));

        let inner_https = run(&none, "203.0.113.70", "443");
        assert_eq!(inner_https.rule.as_deref(), Some("vendor"));
        assert_eq!(inner_https.entry, entry("203.0.113.0/24", Origin::Config));
        let admitting: Vec<&str> = inner_https
            .admitted_by
            .iter()
            .map(|admission| admission.rule.as_str())
            .collect();
        assert_eq!(admitting, ["vendor", "office-ssh"]);

        let outer_ssh = run(&none, "203.0.113.10", "tcp/22");
        assert_eq!(
            (outer_ssh.verdict.as_str(), outer_ssh.reason.as_str()),
            ("drop", "not_allowlisted")
        );
        assert_eq!(outer_ssh.rule, None);
        assert_eq!(outer_ssh.exposing_rules.len(), 1);
        assert_eq!(outer_ssh.exposing_rules[0].rule, "office-ssh");
        assert_eq!(
            outer_ssh.exposing_rules[0].nearest[0],
            entry("203.0.113.64/26", Origin::Config).unwrap()
        );
    }

    #[test]
    fn closed_ports_and_runtime_entries() {
        let closed = run(&RuntimeEntries::new(), "203.0.113.10", "udp/53");
        assert_eq!(closed.reason, "port_closed");
        assert!(closed.exposing_rules.is_empty() && closed.admitted_by.is_empty());

        let added = runtime(&[("office-ssh", "192.0.2.99")]);
        let report = run(&added, "192.0.2.99", "tcp/22");
        assert_eq!(report.rule.as_deref(), Some("office-ssh"));
        assert_eq!(report.entry, entry("192.0.2.99/32", Origin::Cli));
        // The vendor's 192.0.2.0/28 does not hold .99, but is nearest.
        let report = run(&RuntimeEntries::new(), "192.0.2.99", "tcp/443");
        let vendor = &report.exposing_rules[0];
        assert_eq!(vendor.rule, "vendor");
        assert_eq!(
            vendor.nearest[0],
            entry("192.0.2.0/28", Origin::Config).unwrap()
        );
        assert!(vendor.nearest.len() <= NEAREST);
    }

    #[test]
    fn list_shows_origins_and_filters_by_rule() {
        let config = parse_config(OVERLAP).unwrap();
        let added = runtime(&[("vendor", "192.0.2.99")]);
        assert_eq!(list(&config, &added, &FeedLists::new(), None).count(), 5);
        let vendor: Vec<ListedEntry> =
            list(&config, &added, &FeedLists::new(), Some("vendor")).collect();
        let shown: Vec<(String, Origin)> = vendor
            .iter()
            .map(|entry| (entry.prefix.to_string(), entry.origin.clone()))
            .collect();
        assert_eq!(
            shown,
            [
                ("192.0.2.0/28".to_string(), Origin::Config),
                ("203.0.113.0/24".to_string(), Origin::Config),
                ("192.0.2.99/32".to_string(), Origin::Cli),
            ]
        );
        assert_eq!(vendor[2].comment.as_deref(), Some("contractor"));
    }

    #[test]
    fn feed_entries_are_listed_and_explained_with_their_feed() {
        let config = parse_config(
            "interfaces = [\"eth0\"]\n[[feeds]]\nname = \"aws\"\nurl = \"https://x.example/\"\nformat = \"aws\"\n[[rules]]\nname = \"vendor\"\nports = [\"tcp/443\"]\nsources = [\"192.0.2.0/28\"]\nfeeds = [\"aws\"]\n",
        )
        .unwrap();
        let feeds: FeedLists = [(
            "aws".to_string(),
            crate::feeds::normalize::normalize(&[
                "203.0.113.0/24".to_string(),
                "2001:db8:aa::/48".to_string(),
            ])
            .unwrap()
            .list,
        )]
        .into();
        let runtime = RuntimeEntries::new();
        let listed: Vec<(String, String)> = list(&config, &runtime, &feeds, None)
            .map(|entry| (entry.prefix.to_string(), entry.origin.to_string()))
            .collect();
        assert_eq!(
            listed,
            [
                ("192.0.2.0/28".to_string(), "config".to_string()),
                ("203.0.113.0/24".to_string(), "feed:aws".to_string()),
                ("2001:db8:aa::/48".to_string(), "feed:aws".to_string()),
            ]
        );
        let policy = crate::policy::compile_with(&config, &runtime, &feeds).unwrap();
        let report = explain(
            &config,
            &runtime,
            &feeds,
            &policy,
            "203.0.113.9".parse().unwrap(),
            "443".parse().unwrap(),
        );
        assert_eq!(report.reason, "allowed");
        assert_eq!(
            report.entry,
            entry("203.0.113.0/24", Origin::Feed("aws".to_string()))
        );
        assert_eq!(
            serde_json::to_value(&report.entry).unwrap()["origin"],
            "feed:aws"
        );
    }

    #[test]
    fn queries_take_one_address_and_one_port() {
        let (address, port) = parse_query("203.0.113.7", "443").unwrap();
        assert_eq!(address.to_string(), "203.0.113.7");
        assert_eq!(port.to_string(), "tcp/443");
        assert_eq!(
            parse_query("2001:db8::1", "udp/4500")
                .unwrap()
                .1
                .to_string(),
            "udp/4500"
        );
        assert!(
            parse_query("203.0.113.0/24", "443")
                .unwrap_err()
                .contains("not an IP address")
        );
        assert!(
            parse_query("203.0.113.7", "tcp/1-2")
                .unwrap_err()
                .contains("is a range")
        );
        assert!(parse_query("203.0.113.7", "icmp").is_err());
    }

    #[test]
    fn shared_bits_measure_nearness() {
        let prefix: IpPrefix = "192.0.2.0/28".parse().unwrap();
        assert_eq!(
            shared_bits(&prefix, "192.0.2.99".parse().unwrap()),
            Some(25)
        );
        assert_eq!(shared_bits(&prefix, "192.0.2.1".parse().unwrap()), Some(28));
        assert_eq!(shared_bits(&prefix, "2001:db8::1".parse().unwrap()), None);
    }
}
