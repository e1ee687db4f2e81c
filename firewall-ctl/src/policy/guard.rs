//! The lockout guard: a change must not cut the SSH session of the
//! operator making it. The verdict comes from the data plane's own
//! decision function, before and after the change.

use firewall_common::{
    maps::PortKey,
    reasons::Reason,
    verdict::{Packet, decide},
    wire::{Source, protocol},
};

use super::CompiledPolicy;
use crate::{api::SshSession, config::Config};

/// Whether `policy` lets `session`'s packets in.
pub fn admits(policy: &CompiledPolicy, session: &SshSession) -> bool {
    let source = match session.client {
        std::net::IpAddr::V4(v4) => Source::V4(v4.octets()),
        std::net::IpAddr::V6(v6) => Source::V6(v6.octets()),
    };
    let packet = Packet::Transport {
        source,
        port: PortKey::new(protocol::TCP, session.port),
    };
    decide(packet, policy).reason == Reason::Allowed
}

/// Why going from `before` to `after` (compiled from `config`) cuts
/// `session`, with the fix; `None` if it does not. A session `before`
/// already drops (it reaches the host another way) is not cut.
pub fn cuts(
    before: &CompiledPolicy,
    after: &CompiledPolicy,
    config: &Config,
    session: &SshSession,
) -> Option<String> {
    (admits(before, session) && !admits(after, session)).then(|| cut_message(config, session))
}

/// Why a change would cut `session`, and what to add instead, under `config`.
pub fn cut_message(config: &Config, session: &SshSession) -> String {
    let host = match session.client {
        std::net::IpAddr::V4(_) => format!("{}/32", session.client),
        std::net::IpAddr::V6(_) => format!("{}/128", session.client),
    };
    let exposing: Vec<&str> = config
        .rules
        .iter()
        .filter(|rule| {
            rule.ports.iter().any(|range| {
                range.protocol == protocol::TCP
                    && (range.first..=range.last).contains(&session.port)
            })
        })
        .map(|rule| rule.name.as_str())
        .collect();
    let fix = match exposing.first() {
        Some(rule) => format!(
            "add `{host}` to rule `{rule}` (`firewall-ctl allow {host} --rule {rule}`, or in the config)"
        ),
        None => format!(
            "add a rule exposing tcp/{} that lists `{host}`",
            session.port
        ),
    };
    format!(
        "this would cut your own SSH session from {} to tcp/{}: {fix}; or pass `--force` if you mean it",
        session.client, session.port
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::tests::parse, entries::RuntimeEntries, policy::compile};

    fn policy(rules: &str) -> (Config, CompiledPolicy) {
        let config = parse(&format!("interfaces = [\"eth0\"]\n{rules}")).unwrap();
        let policy = compile(&config, &RuntimeEntries::new()).unwrap();
        (config, policy)
    }

    const SSH: &str =
        "[[rules]]\nname = \"admin-ssh\"\nports = [\"tcp/22\"]\nsources = [\"198.51.100.0/24\"]\n";
    const WEB: &str =
        "[[rules]]\nname = \"web\"\nports = [\"tcp/443\"]\nsources = [\"203.0.113.0/24\"]\n";

    #[test]
    fn a_change_that_drops_the_session_is_named_with_the_rule_to_add() {
        let session = SshSession::parse("198.51.100.7 50022 192.0.2.1 22").unwrap();
        let (_, before) = policy(&format!("{SSH}{WEB}"));
        let (config, after) = policy(&format!(
            "{WEB}[[rules]]\nname = \"ops\"\nports = [\"tcp/22\"]\nsources = [\"192.0.2.0/24\"]\n"
        ));
        let message = cuts(&before, &after, &config, &session).unwrap();
        assert!(
            message.contains("cut your own SSH session from 198.51.100.7 to tcp/22"),
            "{message}"
        );
        assert!(
            message.contains("add `198.51.100.7/32` to rule `ops`"),
            "{message}"
        );
        let (config, closed) = policy(WEB);
        let message = cuts(&before, &closed, &config, &session).unwrap();
        assert!(message.contains("add a rule exposing tcp/22"), "{message}");
    }

    #[test]
    fn sessions_kept_or_never_admitted_are_not_cut() {
        let session = SshSession::parse("198.51.100.7 50022 192.0.2.1 22").unwrap();
        let (_, before) = policy(&format!("{SSH}{WEB}"));
        let (config, same) = policy(SSH);
        assert_eq!(cuts(&before, &same, &config, &session), None);
        // Reaching the host another way (a management interface).
        let (_, without) = policy(WEB);
        assert_eq!(cuts(&without, &without, &config, &session), None);
        assert_eq!(SshSession::parse("garbage"), None);
    }
}
