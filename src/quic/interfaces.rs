//! The MTU of this host's network interfaces: where path MTU discovery stops searching
//! (`QuicTuning::max_udp_payload`) unless the user sets it.

/// The bound where the interfaces cannot be read: a 1,500-byte Ethernet path.
pub(super) const FALLBACK_UDP_PAYLOAD: u16 = 1452;

/// IPv6 (40 bytes) and UDP (8 bytes) headers: the larger family's, so one bound fits both.
const HEADERS: u32 = 48;
/// The smallest UDP payload QUIC allows (RFC 9000 §14).
const MIN_UDP_PAYLOAD: u32 = 1200;
/// The largest UDP payload (65,535 minus the 8-byte UDP header).
const MAX_UDP_PAYLOAD: u32 = 65_527;

/// `IFF_UP` and `IFF_LOOPBACK` of Linux's `net_device_flags`.
const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;

/// What is read of one interface.
#[derive(Clone, Copy, Debug)]
struct Interface {
    mtu: u32,
    flags: u32,
}

/// The largest UDP payload worth probing for a node bound to a loopback address
/// (`loopback`) or to another one: the largest MTU of the interfaces of that kind that are
/// up, minus the headers.
pub(super) fn max_udp_payload(loopback: bool) -> u16 {
    payload_for(read_interfaces(), loopback)
}

fn payload_for(interfaces: impl IntoIterator<Item = Interface>, loopback: bool) -> u16 {
    let largest = interfaces
        .into_iter()
        .filter(|i| i.flags & IFF_UP != 0 && (i.flags & IFF_LOOPBACK != 0) == loopback)
        .map(|i| i.mtu)
        .max();
    largest.map_or(FALLBACK_UDP_PAYLOAD, |mtu| {
        let payload = mtu
            .saturating_sub(HEADERS)
            .clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD);
        u16::try_from(payload).unwrap_or(FALLBACK_UDP_PAYLOAD)
    })
}

/// The interfaces of `/sys/class/net`; none where it cannot be read.
#[cfg(target_os = "linux")]
fn read_interfaces() -> Vec<Interface> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let read = |name| std::fs::read_to_string(entry.path().join(name)).ok();
            Some(Interface {
                mtu: read("mtu")?.trim().parse().ok()?,
                flags: parse_flags(&read("flags")?)?,
            })
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn read_interfaces() -> Vec<Interface> {
    Vec::new()
}

/// Flags as sysfs writes them: `0x1003`.
fn parse_flags(text: &str) -> Option<u32> {
    let text = text.trim();
    u32::from_str_radix(text.strip_prefix("0x").unwrap_or(text), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: Interface = Interface {
        mtu: 65_536,
        flags: 0x9,
    };

    fn up(mtu: u32) -> Interface {
        Interface { mtu, flags: 0x1003 }
    }

    fn down(mtu: u32) -> Interface {
        Interface { mtu, flags: 0x1002 }
    }

    #[test]
    fn a_loopback_node_probes_up_to_the_loopback_mtu() {
        assert_eq!(payload_for([LO, up(1500)], true), 65_488);
    }

    #[test]
    fn other_nodes_probe_up_to_the_largest_interface_that_is_up() {
        assert_eq!(payload_for([LO, up(1500)], false), 1452);
        assert_eq!(payload_for([LO, up(1500), up(9000)], false), 8952);
        assert_eq!(payload_for([LO, up(1500), down(9000)], false), 1452);
    }

    #[test]
    fn nothing_readable_or_tiny_mtus_give_safe_bounds() {
        assert_eq!(payload_for([], false), FALLBACK_UDP_PAYLOAD);
        assert_eq!(payload_for([LO], false), FALLBACK_UDP_PAYLOAD);
        assert_eq!(payload_for([up(576)], false), 1200);
        assert_eq!(payload_for([up(1 << 20)], false), 65_527);
    }

    #[test]
    fn sysfs_flags_parse() {
        assert_eq!(parse_flags("0x1003\n"), Some(0x1003));
        assert_eq!(parse_flags("9"), Some(9));
        assert_eq!(parse_flags("up"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_hosts_loopback_is_found() {
        // Every Linux host has `lo` up, with an MTU far above Ethernet's.
        assert!(max_udp_payload(true) > FALLBACK_UDP_PAYLOAD);
    }
}
