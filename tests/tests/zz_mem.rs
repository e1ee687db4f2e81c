use firewall_tests::{daemon::Daemon, lab::Lab};
fn config(count: u32) -> String {
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0));
    let mut sources = Vec::new();
    for index in 0..count {
        let index = 2 * index;
        sources.push(format!("\"{}/32\"", std::net::Ipv4Addr::from(base + index)));
        sources.push(format!(
            "\"2001:db8:{:x}:{:x}::/64\"",
            index >> 16,
            index & 0xffff
        ));
    }
    format!(
        "interfaces = [\"edge0\"]\nxdp_mode = \"driver\"\n\n[[rules]]\nname = \"vendor\"\nports = [\"tcp/443\"]\nsources = [{}]\n",
        sources.join(",")
    )
}
fn mem(daemon: &Daemon) -> String {
    let pid = daemon.status()["pid"].as_u64().unwrap();
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .collect::<Vec<_>>()
        .join(" ")
}
#[test]
fn zz_mem() {
    let lab = Lab::new();
    let daemon = Daemon::start(&lab.edge, &config(250_000));
    eprintln!("after start: {}", mem(&daemon));
    let t = std::time::Instant::now();
    daemon.ctl_ok(&["reload"]);
    eprintln!("reload same {:?}: {}", t.elapsed(), mem(&daemon));
    eprintln!(
        "{}",
        daemon
            .log()
            .lines()
            .filter(|l| true)
            .collect::<Vec<_>>()
            .join("\n")
    );
    panic!();
}
