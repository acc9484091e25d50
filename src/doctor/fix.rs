//! Fix commands: argv to run in the host namespace, and the same as one line to paste.

use serde::Serialize;

use crate::facts::NsFacts;
use crate::program::shell_quote;

/// A command that fixes a fault, as argv (no shell) and as one line a person can paste.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Fix {
    /// What the command does, in words.
    pub summary: String,
    /// The command to run inside the host namespace doctor examined (argv, no shell).
    pub argv: Vec<String>,
    /// The same, as one line to paste in a shell on the machine (with `ip netns exec` when
    /// the host namespace is not the current one).
    pub command: String,
    /// True when the command keeps running (a service to start): run it in the background.
    pub background: bool,
    /// What to run after this one, once what its summary names holds (a CNI container's
    /// runtime has made its new namespace): the second half of a fix that is not one command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then: Option<Box<Fix>>,
}

/// Builds [`Fix`]es for one host namespace.
pub(crate) struct Fixer {
    /// `ip netns exec NAME` prefix for the pasted line, when the host has a name.
    pub(crate) host_name: Option<String>,
    /// `nsenter --net=PATH` prefix otherwise (empty: the current namespace).
    pub(crate) host_path: String,
}

/// The program a rootless engine's fix runs as its user (`runuser -u U -- env K=V ... PROG`,
/// `setpriv ... env K=V ... PROG`): the word after env's assignments, so a container that is
/// named `podman` or `docker` is not taken for the engine.
fn run_as_program(argv: &[String]) -> Option<&str> {
    if !matches!(
        argv.first().map(String::as_str),
        Some("runuser" | "setpriv")
    ) {
        return None;
    }
    let env = argv.iter().position(|a| a == "env")?;
    argv[env + 1..]
        .iter()
        .find(|a| !a.contains('='))
        .map(String::as_str)
}

impl Fixer {
    /// A fix from borrowed argv.
    pub(crate) fn fix(&self, summary: &str, argv: &[&str]) -> Fix {
        self.fix_owned(summary, argv.iter().map(|s| s.to_string()).collect(), false)
    }

    /// A fix from owned argv; `background` for a command that keeps running.
    pub(crate) fn fix_owned(&self, summary: &str, argv: Vec<String>, background: bool) -> Fix {
        // `ip -n NS ...`, `ip netns exec NS ...`, nsenter and engine CLIs (which talk to
        // their daemon's socket, wherever they run) name their target themselves.
        let first = argv.first().map(String::as_str);
        // The docker CLI only talks to its daemon's socket: it runs anywhere. podman runs
        // netavark in the namespace it is started in: it needs the host namespace, entered
        // with nsenter (`ip netns exec` remounts /sys, which podman's cgroup handling trips on).
        // A rootless Podman's command runs as its user (`runuser -u U -- env ... podman ...`,
        // or `setpriv --reuid=UID ... env ... podman ...` for a user /etc/passwd does not know).
        let program = run_as_program(&argv).or(first);
        let podman = program == Some("podman");
        if podman {
            let path = match &self.host_name {
                Some(n) => format!("{}/{n}", crate::netns::NETNS_RUN_DIR),
                None => self.host_path.clone(),
            };
            if !path.is_empty() {
                let mut argv2 = vec!["nsenter".to_string(), format!("--net={path}")];
                argv2.extend(argv);
                return self.fix_owned(summary, argv2, background);
            }
        }
        // A rootless Docker's CLI runs as its user, with DOCKER_HOST naming its socket.
        let self_contained = matches!(first, Some("nsenter" | "docker"))
            || program == Some("docker")
            || (first == Some("ip")
                && (argv.get(1).map(String::as_str) == Some("-n")
                    || (argv.get(1).map(String::as_str) == Some("netns")
                        && argv.get(2).map(String::as_str) == Some("exec"))));
        let mut line: Vec<String> = match &self.host_name {
            _ if self_contained => vec![],
            Some(n) => vec!["ip".into(), "netns".into(), "exec".into(), n.clone()],
            None if self.host_path.is_empty() => vec![],
            None => vec!["nsenter".into(), format!("--net={}", self.host_path)],
        };
        line.extend(argv.iter().cloned());
        let mut command = line
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        if background {
            command.push_str(" &");
        }
        Fix {
            summary: summary.into(),
            argv,
            command,
            background,
            then: None,
        }
    }

    /// argv that runs `cmd` inside namespace `ns` from the host namespace.
    pub(crate) fn in_ns(ns: &NsFacts, cmd: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = match &ns.name {
            Some(n) if cmd.first() == Some(&"ip") => {
                let mut v = vec!["ip".to_string(), "-n".into(), n.clone()];
                v.extend(cmd[1..].iter().map(|s| s.to_string()));
                return v;
            }
            Some(n) => vec!["ip".into(), "netns".into(), "exec".into(), n.clone()],
            None => vec!["nsenter".into(), format!("--net={}", ns.path)],
        };
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_host() {
        let f = Fixer {
            host_name: Some("lab-host".into()),
            host_path: String::new(),
        };
        let x = f.fix("on", &["sysctl", "-w", "net.ipv4.ip_forward=1"]);
        assert_eq!(
            x.command,
            "ip netns exec lab-host sysctl -w net.ipv4.ip_forward=1"
        );
        let x = f.fix("in", &["ip", "-n", "web", "link", "set", "eth0", "up"]);
        assert_eq!(x.command, "ip -n web link set eth0 up");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn a_rootless_podman_fix_runs_as_its_user_in_the_host_namespace() {
        let owner = crate::engine::RootlessOwner {
            uid: 1001,
            user: "rl".into(),
            gid: 1001,
            runtime_dir: "/run/user/1001".into(),
            docker_host: None,
        };
        let f = Fixer {
            host_name: Some("lab-host".into()),
            host_path: String::new(),
        };
        // podman as the user, entered with nsenter (not `ip netns exec`, which remounts /sys):
        // rootlessport listens in the namespace `podman start` runs in.
        let x = f.fix_owned("start", owner.run_as(&["podman", "start", "web"]), false);
        assert_eq!(
            x.command,
            "nsenter --net=/run/netns/lab-host runuser -u rl -- env XDG_RUNTIME_DIR=/run/user/1001 podman start web"
        );
        let here = Fixer {
            host_name: None,
            host_path: String::new(),
        };
        let x = here.fix_owned("start", owner.run_as(&["podman", "start", "web"]), false);
        assert_eq!(
            x.command,
            "runuser -u rl -- env XDG_RUNTIME_DIR=/run/user/1001 podman start web"
        );
    }

    /// A rootless Docker container named `podman` is started with docker as it is: the engine
    /// is the program after env's assignments, not any word equal to an engine's name.
    #[test]
    fn a_rootless_docker_container_named_podman_is_not_taken_for_podman() {
        let owner = crate::engine::RootlessOwner {
            uid: 1001,
            user: "rl".into(),
            gid: 1001,
            runtime_dir: "/run/user/1001".into(),
            docker_host: Some("unix:///run/user/1001/docker.sock".into()),
        };
        let f = Fixer {
            host_name: Some("lab-host".into()),
            host_path: String::new(),
        };
        let x = f.fix_owned("start", owner.run_as(&["docker", "start", "podman"]), false);
        assert_eq!(
            x.command,
            "runuser -u rl -- env XDG_RUNTIME_DIR=/run/user/1001 DOCKER_HOST=unix:///run/user/1001/docker.sock docker start podman"
        );
    }
}
