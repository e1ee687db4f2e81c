//! Who may use the control socket: the socket file's owner, group, mode
//! and ACL, and the check of every request against the peer's credentials
//! (changes need uid 0 or `control_group`, reads also allow `read_group`).

use std::path::Path;

use anyhow::Context as _;

use crate::{
    api::{Command, CommandError},
    config::{Config, Group},
    system,
};

/// Who may use the socket, from the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub control_group: Option<Group>,
    pub read_group: Option<Group>,
}

impl Access {
    pub fn of(config: &Config) -> Self {
        Self {
            control_group: config.control_group.clone(),
            read_group: config.read_group.clone(),
        }
    }
}

/// A connected client's identity, as the kernel recorded it at connect().
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
    /// Primary and supplementary groups.
    pub groups: Vec<u32>,
}

/// Whether `peer` may change the policy: root, or a `control_group` member.
pub fn privileged(peer: &Peer, access: &Access) -> bool {
    peer.uid == 0
        || access
            .control_group
            .as_ref()
            .is_some_and(|group| peer.groups.contains(&group.gid))
}

/// Whether `peer` may run `command`; the error says why not.
pub fn authorize(command: &Command, peer: &Peer, access: &Access) -> Result<(), CommandError> {
    if privileged(peer, access) {
        return Ok(());
    }
    let may_read = access
        .read_group
        .as_ref()
        .is_some_and(|group| peer.groups.contains(&group.gid));
    if may_read && !command.is_change() {
        return Ok(());
    }
    let control = access
        .control_group
        .as_ref()
        .map_or(String::new(), |group| {
            format!(" or membership in group `{}`", group.name)
        });
    Err(CommandError::permission_denied(if may_read {
        format!(
            "permission denied: `{}` changes the allowlist and needs root{control}; group `{}` may only read",
            command.name(),
            access
                .read_group
                .as_ref()
                .map_or("", |group| group.name.as_str())
        )
    } else {
        format!(
            "permission denied: `{}` needs root{control}{}",
            command.name(),
            access.read_group.as_ref().map_or(String::new(), |group| {
                if command.is_change() {
                    String::new()
                } else {
                    format!(" or `{}`", group.name)
                }
            })
        )
    }))
}

/// Gives the socket its owner, group and mode, and the `read_group` ACL.
pub fn secure(path: &Path, access: &Access) -> anyhow::Result<()> {
    let gid = access.control_group.as_ref().map_or(0, |group| group.gid);
    std::os::unix::fs::chown(path, Some(0), Some(gid))
        .with_context(|| format!("setting the owner of `{}`", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
        .with_context(|| format!("setting the mode of `{}`", path.display()))?;
    let read_gid = access
        .read_group
        .as_ref()
        .map(|group| group.gid)
        .filter(|read| *read != gid);
    system::set_group_acl(path, read_gid).with_context(|| {
        format!(
            "giving `read_group` access to `{}` needs POSIX ACLs on its file system; put the socket on one that has them (tmpfs, ext4, xfs) or drop `read_group`",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AllowRequest, ErrorKind, RemoveRequest};

    fn access() -> Access {
        Access {
            control_group: Some(Group {
                name: "fwctl".to_string(),
                gid: 990,
            }),
            read_group: Some(Group {
                name: "fwread".to_string(),
                gid: 991,
            }),
        }
    }

    fn peer(uid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            pid: Some(1),
            groups: groups.to_vec(),
        }
    }

    fn allow() -> Command {
        Command::Allow(AllowRequest {
            prefixes: vec!["192.0.2.1".to_string()],
            rule: None,
            comment: None,
            expires: None,
            force: false,
        })
    }

    #[test]
    fn root_and_control_group_may_change_read_group_may_read() {
        let reads = [
            Command::Status,
            Command::Stats,
            Command::List { rule: None },
        ];
        let changes = [
            allow(),
            Command::Remove(RemoveRequest {
                prefixes: vec![],
                rule: None,
                ssh: None,
                force: false,
            }),
            Command::Reload(Default::default()),
            Command::Confirm,
        ];
        for command in reads.iter().chain(&changes) {
            assert_eq!(authorize(command, &peer(0, &[0]), &access()), Ok(()));
            assert_eq!(
                authorize(command, &peer(1000, &[1000, 990]), &access()),
                Ok(())
            );
            assert!(authorize(command, &peer(1000, &[1000]), &access()).is_err());
        }
        for command in &reads {
            assert_eq!(
                authorize(command, &peer(1001, &[1001, 991]), &access()),
                Ok(())
            );
        }
        for command in &changes {
            let err = authorize(command, &peer(1001, &[991]), &access()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::PermissionDenied);
            assert!(err.message.starts_with("permission denied"), "{err}");
            assert!(err.message.contains("group `fwctl`"), "{err}");
        }
        // Without groups in the config only root gets in.
        assert!(authorize(&Command::Status, &peer(1000, &[990]), &Access::default()).is_err());
    }
}
