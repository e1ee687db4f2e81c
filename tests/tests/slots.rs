//! Both policy slots hold exactly the policy once the idle one has caught
//! up, whatever reloads and edits came before, however fast: read back
//! row by row, the two slots' interval tables are the same and cut the
//! listed prefixes as expected.

use std::{net::Ipv6Addr, path::Path, time::Duration};

use firewall_common::maps::{
    LAYOUT_VERSION, names,
    rows::{PER_SLOT, Table, span_index, v4_bucket_index},
};
use firewall_tests::{
    addr::{PEER_IF, VENDOR_V4},
    bpf, config,
    daemon::{Daemon, poll},
    frames::tcp_v4,
    lab_or_skip,
    traffic::send_frames,
};

/// Bytes of a row of each table.
const SOURCE_V4_ROW: usize = 16;
const SOURCE_V6_ROW: usize = 32;
const ENTRY_V4_ROW: usize = 8;

/// The rows of `table` in `slot`, as raw bytes.
fn rows(maps: &Path, slot: u32, table: Table, name: &str, row_size: usize) -> Vec<Vec<u8>> {
    let at = span_index(slot, table).unwrap();
    let span = &bpf::array_elements(&maps.join(names::SPANS), at..at + 1, 8).unwrap()[0];
    let first = u32::from_ne_bytes(span[..4].try_into().unwrap());
    let len = u32::from_ne_bytes(span[4..].try_into().unwrap());
    assert!(
        (slot * PER_SLOT..(slot + 1) * PER_SLOT).contains(&first) || len == 0,
        "{name}: slot {slot}'s rows start at {first}"
    );
    bpf::array_elements(&maps.join(name), first..first + len, row_size).unwrap()
}

fn word(row: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(row[at..at + 4].try_into().unwrap())
}

fn long(row: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(row[at..at + 8].try_into().unwrap())
}

fn v4(text: &str) -> u32 {
    u32::from(text.parse::<std::net::Ipv4Addr>().unwrap())
}

/// An IPv4 source row: start, rules, and the prefix length of the entry
/// it credits (the top byte of its entry reference).
fn source_v4(row: &[u8]) -> (u32, u64, u32) {
    (word(row, 0), long(row, 8), word(row, 4) >> 24)
}

/// An IPv4 entry row: start and its entry's prefix length (0: none).
fn entry_v4(row: &[u8]) -> (u32, u32) {
    (word(row, 0), word(row, 4) >> 24)
}

/// An IPv6 source row: start and rules.
fn source_v6(row: &[u8]) -> (u128, u64) {
    (
        (u128::from(long(row, 0)) << 64) | u128::from(long(row, 8)),
        long(row, 16),
    )
}

/// The rows of `table` (`name`, rows of `size` bytes), which both slots
/// of the maps in `maps` must hold alike.
fn both(maps: &Path, table: Table, name: &str, size: usize) -> Vec<Vec<u8>> {
    let [zero, one] = [0, 1].map(|slot| rows(maps, slot, table, name, size));
    assert_eq!(zero, one, "{name}: the slots differ");
    zero
}

/// Both slots' IPv4 source rows, decoded ([`source_v4`]).
fn both_sources_v4(maps: &Path) -> Vec<(u32, u64, u32)> {
    let rows = both(
        maps,
        Table::Sources { v4: true },
        names::SOURCES_V4,
        SOURCE_V4_ROW,
    );
    rows.iter().map(|row| source_v4(row)).collect()
}

/// Both slots' IPv6 source rows, decoded ([`source_v6`]).
fn both_sources_v6(maps: &Path) -> Vec<(u128, u64)> {
    let rows = both(
        maps,
        Table::Sources { v4: false },
        names::SOURCES_V6,
        SOURCE_V6_ROW,
    );
    rows.iter().map(|row| source_v6(row)).collect()
}

/// The start of 2001:db8:`third`::/48.
fn db8(third: u16) -> u128 {
    u128::from(Ipv6Addr::new(0x2001, 0xdb8, third, 0, 0, 0, 0, 0))
}

#[test]
fn both_slots_hold_exactly_the_policy_after_rapid_reloads_and_edits() {
    let lab = lab_or_skip!("both_slots_hold_exactly_the_policy_after_rapid_reloads_and_edits");
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

    let maps = daemon.bpf_dir.join(format!("maps-v{LAYOUT_VERSION}"));
    // The vendor (rule 0) and the office (rule 1): the office's /26 inside
    // the vendor's /24 cuts it in three, and credits the vendor's /24
    // first.
    assert_eq!(
        both_sources_v4(&maps),
        [
            (v4("192.0.2.88"), 0b01, 32),
            (v4("192.0.2.89"), 0, 0),
            (v4("198.51.100.0"), 0b10, 24),
            (v4("198.51.101.0"), 0, 0),
            (v4("203.0.113.0"), 0b01, 24),
            (v4("203.0.113.64"), 0b11, 24),
            (v4("203.0.113.128"), 0b01, 24),
            (v4("203.0.114.0"), 0, 0),
        ]
    );
    let starts: Vec<(u128, bool)> = both_sources_v6(&maps)
        .into_iter()
        .map(|(start, rules)| (start, rules != 0))
        .collect();
    assert_eq!(
        starts,
        [
            (db8(1), true),
            (db8(2), false),
            (db8(9), true),
            (db8(10), false)
        ]
    );
    // The office holds a node after the vendor, so it has entry rows: its
    // listings, each up to where nothing of it resumes.
    let office = both(
        &maps,
        Table::Entries { v4: true, rule: 1 },
        names::ENTRIES_V4,
        ENTRY_V4_ROW,
    );
    assert_eq!(
        office.iter().map(|row| entry_v4(row)).collect::<Vec<_>>(),
        [
            (v4("198.51.100.0"), 24),
            (v4("198.51.101.0"), 0),
            (v4("203.0.113.64"), 26),
            (v4("203.0.113.128"), 0),
        ]
    );
    let vendor = both(
        &maps,
        Table::Entries { v4: true, rule: 0 },
        names::ENTRIES_V4,
        ENTRY_V4_ROW,
    );
    assert!(
        vendor.is_empty(),
        "the vendor is always first: no entry rows"
    );
}

/// A change to one address family rewrites that family's rows only, in
/// the slot it makes live and in the catch-up of the other: the other
/// family's rows stay as they are, and both slots end up the same.
#[test]
fn a_change_to_one_family_writes_only_that_familys_rows() {
    let lab = lab_or_skip!("a_change_to_one_family_writes_only_that_familys_rows");
    let listed = config("driver");
    let daemon = Daemon::start(&lab.edge, &listed);
    let written = |config: &str| {
        // Past the catch-up of the idle slot after the previous change.
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::write(&daemon.config, config).unwrap();
        let report: serde_json::Value =
            serde_json::from_str(&daemon.ctl_ok(&["reload", "--json"])).unwrap();
        report["changed_map_entries"].as_u64().unwrap()
    };
    // The vendor's IPv6 /48 moved: two IPv6 source rows (where it starts
    // and where it ends) and the three exposed ports.
    let moved_v6 = listed.replace("2001:db8:1::/48", "2001:db8:2::/48");
    assert_eq!(written(&moved_v6), 2 + 3);
    // The office's /24 halved: six IPv4 source rows, the IPv4 buckets of
    // the slot, the office's four entry rows (its /26 lies in the
    // vendor's /24) and the ports.
    let halved_v4 = moved_v6.replace("198.51.100.0/24", "198.51.100.0/25");
    assert_eq!(
        written(&halved_v4),
        6 + u64::from(firewall_common::maps::rows::V4_BUCKETS) + 4 + 3
    );
    std::thread::sleep(Duration::from_millis(1500));

    let maps = daemon.bpf_dir.join(format!("maps-v{LAYOUT_VERSION}"));
    assert_eq!(
        both_sources_v4(&maps),
        [
            (v4("198.51.100.0"), 0b10, 25),
            (v4("198.51.100.128"), 0, 0),
            (v4("203.0.113.0"), 0b01, 24),
            (v4("203.0.113.64"), 0b11, 24),
            (v4("203.0.113.128"), 0b01, 24),
            (v4("203.0.114.0"), 0, 0),
        ]
    );
    assert_eq!(both_sources_v6(&maps), [(db8(2), 0b01), (db8(3), 0)]);
}

/// A span of the live slot that reaches into the other slot's rows (a
/// damaged map, or maps a writer that disagrees left behind) is never
/// searched: the vendor's packets find no source there and are dropped as
/// not allowlisted, and the XDP program reports it through aya-log, which
/// the daemon forwards into its log with the program's name. Three packets
/// make two reports: the 1st and 2nd occurrence on a CPU (powers of two).
#[test]
fn a_live_span_outside_its_slot_is_not_searched_and_is_reported() {
    let lab = lab_or_skip!("a_live_span_outside_its_slot_is_not_searched_and_is_reported");
    let daemon = Daemon::start(&lab.edge, &config("driver"));
    let maps = daemon.bpf_dir.join(format!("maps-v{LAYOUT_VERSION}"));
    let active = bpf::array_elements(&maps.join(names::ACTIVE), 0..1, 4).unwrap();
    let live = u32::from_ne_bytes(active[0][..].try_into().unwrap()) & 1;
    let other_slots_rows = [((1 - live) * PER_SLOT).to_ne_bytes(), 1u32.to_ne_bytes()].concat();
    bpf::set_array_element(
        &maps.join(names::SOURCE_BUCKETS_V4),
        v4_bucket_index(live, u32::from(VENDOR_V4)),
        &other_slots_rows,
    )
    .unwrap();

    let before = daemon.stats();
    // A veth receives on the CPU that sent: sent from one CPU, the frames
    // are its 1st, 2nd and 3rd occurrence, and the first two are reported.
    let mut cpu0 = nix::sched::CpuSet::new();
    cpu0.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0).unwrap();
    send_frames(&lab.peer, PEER_IF, vec![tcp_v4(VENDOR_V4, 443); 3]);
    daemon
        .settled_stats()
        .assert_drops_since(&before, &[("not_allowlisted", 3)]);
    let reports = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let log = daemon.log();
        let reports: Vec<String> = log
            .lines()
            .filter(|line| line.contains("the policy maps do not match ACTIVE"))
            .map(str::to_string)
            .collect();
        (reports.len() >= 2).then_some(reports)
    })
    .unwrap_or_else(|| panic!("no report in the log:\n{}", daemon.log()));
    let rows = format!(
        "live slot {live} has a span of 1 rows from row {}",
        (1 - live) * PER_SLOT
    );
    assert_eq!(reports.len(), 2, "{reports:#?}");
    for (report, occurrence) in reports.iter().zip(["occurrence 1 ", "occurrence 2 "]) {
        assert!(
            report.contains("ERROR")
                && report.contains(r#"program="firewall""#)
                && report.contains(&rows)
                && report.contains(occurrence),
            "{report}"
        );
    }
}
