//! Two simulated hosts: network namespaces joined by a veth pair, on 198.18.0.0/15 (the
//! benchmarking range). Needs root and iproute2; everything is deleted on drop.

/// Runs `ip ARGS`, failing the test on error.
pub fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why namespace tests cannot run here, if they cannot.
pub fn unsupported() -> Option<String> {
    let uid = std::process::Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("needs root (network namespaces)".to_owned());
    }
    match std::process::Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("needs ip (iproute2)".to_owned()),
    }
}

/// Two namespaces joined by a veth pair: host `i` has device `{dev}{i}` at `{subnet}.{i+1}/24`.
/// Deleted on drop (with them the veth pair).
pub struct VethHosts {
    pub names: [String; 2],
    dev: String,
}

impl VethHosts {
    /// Namespaces named from `tag` and this process's id (so that concurrent test processes
    /// do not meet); `subnet` is the first three octets, e.g. `198.18.6`.
    pub fn new(tag: &str, dev: &str, subnet: &str) -> Self {
        let pid = std::process::id();
        let names = [0, 1].map(|i| format!("qr-{tag}{pid}-{i}"));
        for name in &names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output();
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        // Owned from here: a failure below still deletes the namespaces.
        let hosts = Self {
            names,
            dev: dev.to_owned(),
        };
        let [dev0, dev1] = [0, 1].map(|i| hosts.dev(i));
        ip(&[
            "link",
            "add",
            &dev0,
            "netns",
            &hosts.names[0],
            "type",
            "veth",
            "peer",
            "name",
            &dev1,
            "netns",
            &hosts.names[1],
        ]);
        for (i, name) in hosts.names.iter().enumerate() {
            let addr = format!("{subnet}.{}/24", i + 1);
            ip(&["-n", name, "addr", "add", &addr, "dev", &hosts.dev(i)]);
            ip(&["-n", name, "link", "set", &hosts.dev(i), "up"]);
        }
        hosts
    }

    /// Host `i`'s end of the veth pair.
    pub fn dev(&self, i: usize) -> String {
        format!("{}{i}", self.dev)
    }

    /// Runs `sysctl -qw SETTING` in host `i`'s namespace.
    pub fn sysctl(&self, i: usize, setting: &str) {
        let name = &self.names[i];
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", name, "sysctl", "-qw", setting])
            .status()
            .expect("run sysctl");
        assert!(status.success(), "sysctl {setting} in {name}");
    }

    /// Takes the link down (`up` false) or up again, on both ends.
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        for (i, name) in self.names.iter().enumerate() {
            ip(&["-n", name, "link", "set", &self.dev(i), state]);
        }
    }
}

impl Drop for VethHosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output();
        }
    }
}
