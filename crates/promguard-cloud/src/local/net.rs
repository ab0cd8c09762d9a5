//! Network namespaces, the hub bridge and the underlay range, all through
//! `ip`. Nothing here adds an address, route or interface to the root
//! namespace: every `ip` command that changes something runs with `-n` on a
//! namespace of the deployment.

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnetwork::Ipv4Network;
use nix::sched::{setns, CloneFlags};

use super::preflight::SEARCH_PATH;

/// Where `ip netns` keeps its namespace files.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// The range the underlays come from (RFC 2544 benchmarking range: never
/// routed on the internet, rarely used on a machine).
pub(crate) const UNDERLAY_RANGE: &str = "198.18.0.0/15";

/// The file of a named network namespace.
pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `program` with `args` (and `stdin`, if any) and returns its standard
/// output, or a message with its standard error.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let describe = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .env("PATH", SEARCH_PATH)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run {}: {err}", describe()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|err| format!("cannot write to {}: {err}", describe()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|err| format!("cannot run {}: {err}", describe()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "{} failed ({}): {}",
            describe(),
            output.status,
            stderr.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip` commands (one per line, without the leading `ip`) inside
/// `netns`, in one process.
pub(crate) fn ip_batch(netns: &str, commands: &[String]) -> Result<(), String> {
    let mut script = commands.join("\n");
    script.push('\n');
    run("ip", &["-n", netns, "-batch", "-"], Some(&script)).map(drop)
}

/// Creates a named network namespace.
pub(crate) fn add_netns(name: &str) -> Result<(), String> {
    run("ip", &["netns", "add", name], None).map(drop)
}

/// Kills (SIGKILL) every process that lives in the named network namespace
/// and waits, bounded, until none is left. The namespace is the
/// deployment's own, so every process in it is one the deployment started;
/// this also ends a host whose init an interrupted run never recorded.
pub(crate) fn kill_netns_processes(name: &str, timeout: std::time::Duration) -> Result<(), String> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    let pids = || -> Result<Vec<i32>, String> {
        let out = run("ip", &["netns", "pids", name], None)?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|&p| p > 1)
            .collect())
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = pids()?;
        if left.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "processes {left:?} in namespace {name} did not end within {} s of SIGKILL",
                timeout.as_secs()
            ));
        }
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Deletes a named network namespace; a missing one is fine. The kernel
/// frees the namespace (and the veth ends in it) once no process uses it.
pub(crate) fn delete_netns(name: &str) -> Result<(), String> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    run("ip", &["netns", "delete", name], None).map(drop)
}

/// The IPv4 destinations of every route of the root namespace, in every
/// table, except default routes (which overlap everything by definition
/// and would make every choice impossible).
pub(crate) fn root_routes() -> Result<Vec<Ipv4Network>, String> {
    let json = run("ip", &["-4", "-j", "route", "show", "table", "all"], None)?;
    parse_routes(&json)
}

fn parse_routes(json: &str) -> Result<Vec<Ipv4Network>, String> {
    let routes: Vec<serde_json::Value> = serde_json::from_str(json)
        .map_err(|err| format!("cannot parse the output of ip -j route: {err}"))?;
    let mut networks = Vec::new();
    for route in routes {
        let Some(dst) = route.get("dst").and_then(|d| d.as_str()) else {
            continue;
        };
        if dst == "default" {
            continue;
        }
        let network = if dst.contains('/') {
            dst.parse::<Ipv4Network>()
        } else {
            dst.parse::<Ipv4Addr>()
                .map_err(|_| ipnetwork::IpNetworkError::InvalidAddr(dst.to_owned()))
                .and_then(|addr| Ipv4Network::new(addr, 32))
        };
        // Entries that are not IPv4 destinations (multicast keywords and
        // the like) cannot collide with an IPv4 underlay.
        if let Ok(network) = network {
            if network.prefix() > 0 {
                networks.push(network);
            }
        }
    }
    Ok(networks)
}

/// The first /24 of [`UNDERLAY_RANGE`] that overlaps no route of the root
/// namespace and no other deployment's underlay.
pub(crate) fn pick_underlay(routes: &[Ipv4Network], taken: &[Ipv4Network]) -> Option<Ipv4Network> {
    let range: Ipv4Network = UNDERLAY_RANGE.parse().expect("valid constant");
    let base = u32::from(range.network());
    let count = 1u32 << (24 - range.prefix());
    (0..count)
        .map(|i| Ipv4Network::new(Ipv4Addr::from(base + (i << 8)), 24).expect("valid /24"))
        .find(|candidate| {
            !routes.iter().any(|r| r.overlaps(*candidate))
                && !taken.iter().any(|t| t.overlaps(*candidate))
        })
}

/// Makes `command` start in a session of its own (so that it outlives the
/// caller) inside the network namespace `ns`.
pub(crate) fn detach_into_netns(command: &mut Command, ns: std::os::fd::OwnedFd) {
    use std::os::fd::AsFd;
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only makes two system
    // calls (setsid, setns) on a file descriptor opened before the fork; it
    // allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            Ok(())
        });
    }
}

/// Runs `f` on a new thread that has entered the network namespace at
/// `ns_path` (a file under `/run/netns` or `/proc/<pid>/ns/net`). Sockets
/// that `f` opens stay in that namespace after `f` returns; the calling
/// thread never changes namespace.
pub fn run_in_netns<T: Send>(ns_path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = File::open(ns_path).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot open network namespace {}: {err}", ns_path.display()),
        )
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                    io::Error::new(
                        io::Error::from(errno).kind(),
                        format!(
                            "cannot enter network namespace {}: {errno}",
                            ns_path.display()
                        ),
                    )
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("the thread in the network namespace panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Ipv4Network> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn routes_from_ip_json() {
        let json = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0"},
            {"dst":"192.0.2.0/24","dev":"eth0"},
            {"type":"local","dst":"127.0.0.1","dev":"lo","table":"local"},
            {"type":"multicast","dst":"ff00::/8"}]"#;
        assert_eq!(
            parse_routes(json).unwrap(),
            nets(&["192.0.2.0/24", "127.0.0.1/32"])
        );
    }

    #[test]
    fn underlay_skips_routes_and_other_deployments() {
        assert_eq!(
            pick_underlay(&nets(&["192.0.2.0/24"]), &[]),
            Some("198.18.0.0/24".parse().unwrap())
        );
        assert_eq!(
            pick_underlay(
                &nets(&["198.18.0.0/23", "10.0.0.0/8"]),
                &nets(&["198.18.2.0/24"])
            ),
            Some("198.18.3.0/24".parse().unwrap())
        );
        // A route covering the whole range leaves nothing.
        assert_eq!(pick_underlay(&nets(&["198.16.0.0/12"]), &[]), None);
        // The last candidate is 198.19.255.0/24.
        assert_eq!(
            pick_underlay(
                &nets(&[
                    "198.18.0.0/16",
                    "198.19.0.0/17",
                    "198.19.128.0/18",
                    "198.19.192.0/19",
                    "198.19.224.0/20",
                    "198.19.240.0/21",
                    "198.19.248.0/22",
                    "198.19.252.0/23",
                    "198.19.254.0/24"
                ]),
                &[]
            ),
            Some("198.19.255.0/24".parse().unwrap())
        );
    }

    #[test]
    fn this_machine_has_a_free_underlay() {
        let routes = root_routes().unwrap();
        assert!(pick_underlay(&routes, &[]).is_some(), "{routes:?}");
    }
}
