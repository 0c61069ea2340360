//! A webhook or callback URL, parsed: `http` or `https`, a host, no
//! credentials, no fragment. An address given literally (or `localhost`) is
//! checked against the address policy here; a host name is checked on the
//! addresses it resolves to, by the caller that resolves it.

use std::net::IpAddr;

use super::address::{self, AddressClass};

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// A URL a delivery may be sent to (as far as can be told without DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    url: url::Url,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Invalid(String),
    /// The host is, or resolves to, an address the policy refuses.
    #[error(
        "{host} is a {} address ({ip}); webhooks go to public addresses only unless \
         webhooks.allow_private_targets is set",
        class.as_str()
    )]
    Refused {
        host: String,
        ip: IpAddr,
        class: AddressClass,
    },
}

impl TargetUrl {
    /// Parses `raw` and applies the address policy to a literal address.
    ///
    /// # Errors
    /// [`TargetError`] saying what is wrong.
    pub fn parse(raw: &str, allow_private_targets: bool) -> Result<Self, TargetError> {
        let invalid = |m: &str| TargetError::Invalid(m.to_owned());
        if raw.is_empty() || raw.len() > MAX_URL_LEN {
            return Err(invalid("must be 1 to 2048 characters"));
        }
        let url =
            url::Url::parse(raw).map_err(|e| TargetError::Invalid(format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("must be an http:// or https:// URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("must not carry credentials"));
        }
        if url.fragment().is_some() {
            return Err(invalid("must not have a fragment"));
        }
        let target = Self { url };
        let host = target.host().ok_or_else(|| invalid("must have a host"))?;
        if let Some(ip) = target.literal_ip() {
            check(&host, ip, allow_private_targets)?;
        } else if !allow_private_targets && is_localhost_name(&host) {
            return Err(TargetError::Refused {
                host,
                ip: IpAddr::from([127, 0, 0, 1]),
                class: AddressClass::Loopback,
            });
        }
        Ok(target)
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The host as written (without IPv6 brackets).
    pub fn host(&self) -> Option<String> {
        match self.url.host()? {
            url::Host::Domain(d) => Some(d.to_owned()),
            url::Host::Ipv4(ip) => Some(ip.to_string()),
            url::Host::Ipv6(ip) => Some(ip.to_string()),
        }
    }

    /// The address when the host is one.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match self.url.host()? {
            url::Host::Domain(_) => None,
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        }
    }

    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(80)
    }
}

/// Whether `host` names this machine whatever DNS says.
fn is_localhost_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// The policy applied to one address `host` resolved to.
///
/// # Errors
/// [`TargetError::Refused`].
pub fn check(host: &str, ip: IpAddr, allow_private_targets: bool) -> Result<(), TargetError> {
    address::allowed(ip, allow_private_targets).map_err(|class| TargetError::Refused {
        host: host.to_owned(),
        ip,
        class,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_and_no_credentials() {
        assert!(TargetUrl::parse("https://hooks.example.com/x?t=1", false).is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://example.com",
            "https://u:p@example.com/",
            "https://example.com/#f",
            "not a url",
            "",
            "http://",
        ] {
            assert!(
                matches!(TargetUrl::parse(bad, true), Err(TargetError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn literal_private_addresses_are_refused_unless_allowed() {
        for bad in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://localhost:9000/",
            "http://a.localhost./",
            "http://2130706433/",
        ] {
            assert!(
                matches!(
                    TargetUrl::parse(bad, false),
                    Err(TargetError::Refused { .. })
                ),
                "{bad:?}"
            );
            assert!(TargetUrl::parse(bad, true).is_ok(), "{bad:?} allowed");
        }
        let t = TargetUrl::parse("http://[fe80::1]:81/h", true).expect("allowed");
        assert_eq!(t.host().as_deref(), Some("fe80::1"));
        assert_eq!(t.port(), 81);
        let e = TargetUrl::parse("http://10.1.1.1/", false).expect_err("private");
        assert!(e.to_string().contains("allow_private_targets"), "{e}");
    }
}
