//! Unprivileged users and groups for one test, removed when it ends.

use std::{
    path::Path,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{daemon::binary, lab::Netns};

/// Prefix of every user and group the tests create; `cargo xtask test`
/// removes leftovers of killed runs by it (`fwt<pid>...`).
pub const ACCOUNT_PREFIX: &str = "fwt";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
fn unique(kind: &str) -> String {
    format!(
        "{ACCOUNT_PREFIX}{}{kind}{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A group, deleted on drop.
pub struct Group {
    pub name: String,
}

impl Group {
    pub fn create() -> Group {
        let name = unique("g");
        run("groupadd", &[&name]);
        Group { name }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// A user without a home or a login shell, deleted on drop.
pub struct User {
    pub name: String,
}

impl User {
    /// Creates a user who is a member of `groups`.
    pub fn create(groups: &[&Group]) -> User {
        let name = unique("u");
        let list: Vec<&str> = groups.iter().map(|group| group.name.as_str()).collect();
        let mut args = vec![
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
        ];
        let joined = list.join(",");
        if !list.is_empty() {
            args.extend(["--groups", &joined]);
        }
        args.push(&name);
        run("useradd", &args);
        User { name }
    }

    /// Runs `firewall-ctl --socket <socket> <args>` as this user, with the
    /// groups the user database gives them.
    pub fn ctl(&self, socket: &Path, args: &[&str]) -> Output {
        let socket = socket.to_str().unwrap();
        self.run_in(None, &[&["--socket", socket], args].concat())
    }

    /// Runs `firewall-ctl <args>` as this user, in namespace `ns` if given.
    pub fn run_in(&self, ns: Option<&Netns>, args: &[&str]) -> Output {
        let mut command = match ns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &ns.name, "setpriv"]);
                command
            }
            None => Command::new("setpriv"),
        };
        command
            .args([
                &format!("--reuid={}", self.name),
                &format!("--regid={}", self.name),
                "--init-groups",
                "--",
            ])
            .arg(binary())
            .args(args)
            .output()
            .expect("running firewall-ctl as a test user")
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}
