//! Both policy slots hold exactly the policy once the idle one has caught
//! up, whatever reloads and edits came before, however fast: each change
//! writes only where the idle slot may differ, so a key it missed would
//! stay behind in one slot.

use std::{collections::BTreeMap, time::Duration};

use firewall_common::maps::{LAYOUT_VERSION, names};
use firewall_tests::{bpf, config, daemon::Daemon, lab::Lab, root_or_skip};

/// The source and entry tries: the map names of both slots, key and value
/// sizes.
const TRIES: [([&str; 2], usize, usize); 4] = [
    (names::SOURCES_V4, 8, 16),
    (names::SOURCES_V6, 20, 16),
    (names::ENTRIES_V4, 9, 4),
    (names::ENTRIES_V6, 21, 4),
];

type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// Each trie of each slot.
fn tries(daemon: &Daemon) -> Vec<[Entries; 2]> {
    let maps = daemon.bpf_dir.join(format!("maps-v{LAYOUT_VERSION}"));
    TRIES
        .iter()
        .map(|(slots, key_size, value_size)| {
            slots.map(|name| bpf::map_entries(&maps.join(name), *key_size, *value_size).unwrap())
        })
        .collect()
}

/// A source trie key: the prefix length, then the address bytes.
fn key(len: u32, address: &[u8]) -> Vec<u8> {
    let mut key = len.to_ne_bytes().to_vec();
    key.extend_from_slice(address);
    key
}

#[test]
fn both_slots_hold_exactly_the_policy_after_rapid_reloads_and_edits() {
    if !root_or_skip("both_slots_hold_exactly_the_policy_after_rapid_reloads_and_edits") {
        return;
    }
    let lab = Lab::new();
    let listed = config("driver");
    let daemon = Daemon::start(&lab.edge, &listed);
    // A new list for the vendor (the office's /26 is then nested in
    // another rule's /25), then the office's list grown.
    let new_list = listed.replace(
        r#"sources = ["203.0.113.0/24", "2001:db8:1::/48"]"#,
        r#"sources = ["203.0.113.0/25", "198.51.100.128/25", "2001:db8:2::/48"]"#,
    );
    assert_ne!(new_list, listed);
    let grown = new_list.replace(
        r#"sources = ["203.0.113.64/26", "198.51.100.0/24"]"#,
        r#"sources = ["203.0.113.64/26", "198.51.100.0/24", "192.0.2.128/25"]"#,
    );
    assert_ne!(grown, new_list);

    // Back to back: most land while the idle slot still lags.
    assert_eq!(
        daemon.reload(&new_list)["last_reload_error"],
        serde_json::Value::Null
    );
    daemon.ctl_ok(&["allow", "192.0.2.77", "--rule", "vendor"]);
    daemon.reload(&grown);
    daemon.ctl_ok(&["remove", "192.0.2.77", "--rule", "vendor"]);
    daemon.ctl_ok(&["allow", "2001:db8:9::/48", "--rule", "office-ssh"]);
    daemon.reload(&listed);
    daemon.ctl_ok(&["allow", "192.0.2.88", "--rule", "vendor"]);
    let status = daemon.status();
    assert_eq!(status["reloads"], 3, "{status}");
    std::thread::sleep(Duration::from_millis(1500));

    let tries = tries(&daemon);
    for ((slots, _, _), [zero, one]) in TRIES.iter().zip(&tries) {
        assert_eq!(zero, one, "{} and {} differ", slots[0], slots[1]);
    }
    let v4: Vec<Vec<u8>> = tries[0][0].keys().cloned().collect();
    let mut expected_v4 = vec![
        key(32, &[192, 0, 2, 88]),
        key(24, &[198, 51, 100, 0]),
        key(24, &[203, 0, 113, 0]),
        key(26, &[203, 0, 113, 64]),
    ];
    expected_v4.sort();
    assert_eq!(v4, expected_v4);
    let v6: Vec<Vec<u8>> = tries[1][0].keys().cloned().collect();
    let db8 = |third: u8| {
        let mut address = [0u8; 16];
        address[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, third]);
        key(48, &address)
    };
    let mut expected_v6 = vec![db8(1), db8(9)];
    expected_v6.sort();
    assert_eq!(v6, expected_v6);
    // The office rule holds a node after the vendor (its /26 inside the
    // vendor's /24), so the entry trie has its listings: rule byte, then
    // the address, the length counting the rule's 8 bits.
    let entries: Vec<Vec<u8>> = tries[2][0].keys().cloned().collect();
    assert_eq!(
        entries,
        [
            key(32, &[1, 198, 51, 100, 0]),
            key(34, &[1, 203, 0, 113, 64])
        ]
    );
}
