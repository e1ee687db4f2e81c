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

/// What a process runs as: uid, gid and supplementary groups.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Credentials {
    /// Makes the calling thread, one made for it, run with these
    /// credentials for the rest of its life. Raw system calls change the
    /// credentials of that thread alone (the libc wrappers would change
    /// every thread's), so the rest of the test stays root; a socket it
    /// connects carries these credentials (SO_PEERCRED, SO_PEERGROUPS)
    /// wherever it is used after.
    pub fn adopt(&self) {
        // SAFETY: plain system calls on values we own, affecting only the
        // calling thread.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, self.gid, self.gid, self.gid),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, self.uid, self.uid, self.uid),
                0
            );
        }
    }

    /// Runs `f` on a thread of its own that adopts these credentials first.
    pub fn on_thread<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let credentials = self.clone();
        std::thread::spawn(move || {
            credentials.adopt();
            f()
        })
        .join()
        .expect("a thread running as a test user panicked")
    }
}

/// A user without a home or a login shell, deleted on drop.
pub struct User {
    pub name: String,
}

/// `id <flag> <name>`: numeric ids of a user.
fn ids(flag: &str, name: &str) -> Vec<u32> {
    let output = Command::new("id").args([flag, name]).output().unwrap();
    assert!(output.status.success(), "id {flag} {name}");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect()
}

impl User {
    pub fn uid(&self) -> u32 {
        ids("-u", &self.name)[0]
    }

    /// The user's uid, primary gid and groups.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            uid: self.uid(),
            gid: ids("-g", &self.name)[0],
            groups: ids("-G", &self.name),
        }
    }

    /// Runs `f` on a thread of its own with this user's credentials (see
    /// [`Credentials::adopt`]).
    pub fn on_thread<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.credentials().on_thread(f)
    }

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
