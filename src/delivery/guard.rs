//! SSRF guard: targets resolving to loopback, private, link-local, unspecified, shared or
//! metadata addresses are refused unless `delivery.allow_private_targets = true`.
//!
//! Checked at connect time by a DNS resolver that drops forbidden addresses (so a name like
//! `localhost` or a DNS rebinding answer is refused), and for IP-literal URLs, which skip DNS,
//! before sending. `sql/walhook.sql` refuses IP-literal targets at subscribe time with the
//! same ranges.
//!
//! IPv6 addresses that embed an IPv4 address are judged as that IPv4 address: IPv4-mapped
//! (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4
//! (`2002::/16`); the local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215, whose embedding
//! depends on a local prefix length) is refused as a whole.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether delivering to `ip` is refused when private targets are not allowed.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 address stands for, where it embeds one: IPv4-mapped
/// `::ffff:0:0/96`, IPv4-compatible `::/96` (including `::` and `::1`, as `0.0.0.0` and
/// `0.0.0.1`), NAT64 `64:ff9b::/96`, 6to4 `2002::/16`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254 (cloud metadata)
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 224 // multicast and reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, includes fd00:ec2::254 (metadata)
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x64 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1) // local-use NAT64
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

/// A resolver that drops forbidden addresses, and fails when none is left.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let allowed = resolve(name.as_str(), 0, false).await?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// `host`'s addresses at `port` (an IP literal is its own address), the forbidden ones
/// dropped unless `allow_private`; [`Forbidden`] when none is left.
pub async fn resolve(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let allowed: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await?
        .filter(|a| allow_private || !is_forbidden(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(Box::new(Forbidden(host.to_owned())));
    }
    Ok(allowed)
}

/// The target resolves only to addresses walhook refuses.
#[derive(Debug, thiserror::Error)]
#[error(
    "target {0} resolves only to loopback/private/link-local addresses, refused \
     (set delivery.allow_private_targets = true to allow)"
)]
pub struct Forbidden(pub String);

/// The resolver as reqwest wants it.
pub fn resolver() -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_private_ranges_and_allows_public() {
        for ip in [
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ipv6_embedding_ipv4_is_judged_as_its_ipv4() {
        for ip in [
            "::127.0.0.1",
            "::7f00:1",
            "::10.1.2.3",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::192.168.0.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:0101:5::9",
            "64:ff9b:1::8.8.8.8",
            "64:ff9b:1:abcd::1",
            "2001:db8::1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "::8.8.8.8",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "64:ff9b::5db8:d822",
            "2002:0808:0808::1",
            "64:ff9b:2::1",
        ] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(
            embedded_v4("2002:c0a8:0101::".parse().unwrap()),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
        assert_eq!(
            embedded_v4("64:ff9b::5db8:d822".parse().unwrap()),
            Some(Ipv4Addr::new(93, 184, 216, 34))
        );
        assert_eq!(embedded_v4("2606:4700::1111".parse().unwrap()), None);
    }
}
