//! Linking a newly seen HAProxy server to an AC application (DESIGN.md,
//! "Application mapping"): first by IP:port, for applications that have a
//! port; when nothing matches that way, by the server name template
//! (`{hostname}_{app_name}_{instance}` unless configured otherwise).
//!
//! A [`Matcher`] indexes the candidates once, so linking every server of a
//! sync is O(servers + applications).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The server name template used when none is configured.
pub const DEFAULT_TEMPLATE: &str = "{hostname}_{app_name}_{instance}";

/// One AC application, with the host it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCandidate {
    pub id: i64,
    pub name: String,
    pub port: Option<i32>,
    pub instance: Option<String>,
    /// `servers.ip` of the application's host.
    pub host_ip: Option<String>,
    /// `servers.hostname` of the application's host.
    pub hostname: Option<String>,
}

/// How a link was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    AddressPort,
    NameTemplate,
}

impl MatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::AddressPort => "address_port",
            MatchKind::NameTemplate => "name_template",
        }
    }
}

impl fmt::Display for MatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of linking one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Linked {
        application_id: i64,
        by: MatchKind,
    },
    /// Several applications match equally well; their ids, ascending. The
    /// server stays unlinked rather than linked to a guess.
    Ambiguous(Vec<i64>),
    Unmatched,
}

/// A server name template that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("server name template is empty")]
    Empty,
    #[error(
        "server name template {template:?} has an unknown placeholder {{{found}}} at position {position}; \
         expected {{hostname}}, {{app_name}} or {{instance}}"
    )]
    UnknownPlaceholder {
        template: String,
        found: String,
        position: usize,
    },
    #[error(
        "server name template {template:?} has an unbalanced {brace:?} at position {position}; \
         placeholders are written {{hostname}}, {{app_name}}, {{instance}}"
    )]
    Unbalanced {
        template: String,
        brace: char,
        position: usize,
    },
    #[error(
        "server name template {template:?} has no placeholder; \
         use {{hostname}}, {{app_name}} and/or {{instance}}"
    )]
    NoPlaceholder { template: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Hostname,
    AppName,
    Instance,
}

/// A parsed server name template, such as [`DEFAULT_TEMPLATE`]: literal text
/// and the placeholders `{hostname}`, `{app_name}` and `{instance}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    raw: String,
    parts: Vec<Part>,
}

/// Longest template text quoted back in an error message.
const QUOTE_MAX: usize = 200;

fn quote(raw: &str) -> String {
    raw.chars().take(QUOTE_MAX).collect()
}

impl NameTemplate {
    /// Parses a template. Every `{` must be closed by a `}` before the next
    /// `{`, and name one of the three placeholders; at least one placeholder
    /// is required (a template of literal text alone would give every
    /// application the same name).
    pub fn parse(raw: &str) -> Result<Self, TemplateError> {
        if raw.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        // (char position of '{', placeholder text so far)
        let mut open: Option<(usize, String)> = None;
        for (position, c) in raw.chars().enumerate() {
            match (c, open.as_mut()) {
                ('{', Some(_)) | ('}', None) => {
                    return Err(TemplateError::Unbalanced {
                        template: quote(raw),
                        brace: c,
                        position,
                    });
                }
                ('{', None) => open = Some((position, String::new())),
                ('}', Some((start, name))) => {
                    let part = match name.as_str() {
                        "hostname" => Part::Hostname,
                        "app_name" => Part::AppName,
                        "instance" => Part::Instance,
                        _ => {
                            return Err(TemplateError::UnknownPlaceholder {
                                template: quote(raw),
                                found: name.chars().take(QUOTE_MAX).collect(),
                                position: *start,
                            });
                        }
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    open = None;
                }
                (_, Some((_, name))) => name.push(c),
                (_, None) => literal.push(c),
            }
        }
        if let Some((position, _)) = open {
            return Err(TemplateError::Unbalanced {
                template: quote(raw),
                brace: '{',
                position,
            });
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if parts.iter().all(|p| matches!(p, Part::Literal(_))) {
            return Err(TemplateError::NoPlaceholder {
                template: quote(raw),
            });
        }
        Ok(NameTemplate {
            raw: raw.to_owned(),
            parts,
        })
    }

    /// The server name an application would have under this template.
    pub fn render(&self, hostname: &str, app_name: &str, instance: &str) -> String {
        let mut out = String::with_capacity(hostname.len() + app_name.len() + instance.len() + 8);
        for part in &self.parts {
            out.push_str(match part {
                Part::Literal(s) => s,
                Part::Hostname => hostname,
                Part::AppName => app_name,
                Part::Instance => instance,
            });
        }
        out
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl Default for NameTemplate {
    /// [`DEFAULT_TEMPLATE`].
    fn default() -> Self {
        NameTemplate {
            raw: DEFAULT_TEMPLATE.to_owned(),
            parts: vec![
                Part::Hostname,
                Part::Literal("_".to_owned()),
                Part::AppName,
                Part::Literal("_".to_owned()),
                Part::Instance,
            ],
        }
    }
}

impl FromStr for NameTemplate {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NameTemplate::parse(s)
    }
}

impl fmt::Display for NameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// An address in a comparable form: brackets and surrounding blanks
/// trimmed, lower case; an IP address in its canonical text (so `::1` and
/// `0:0:0:0:0:0:0:1` are one address).
fn normalize_address(raw: &str) -> String {
    let trimmed = raw.trim();
    let bare = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed)
        .trim();
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => bare.to_ascii_lowercase(),
    }
}

/// The ids in `ids`, sorted and deduplicated, as a link.
fn link_of(mut ids: Vec<i64>, by: MatchKind) -> Link {
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [] => Link::Unmatched,
        [id] => Link::Linked {
            application_id: *id,
            by,
        },
        _ => Link::Ambiguous(ids),
    }
}

/// Links servers to applications; build once per sync, ask per server.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    by_address_port: HashMap<(String, i32), Vec<i64>>,
    by_name: HashMap<String, Vec<i64>>,
}

impl Matcher {
    /// Indexes `apps` by (host IP, port) and by rendered name. An application
    /// without a port or host IP is only reachable by name; one without a
    /// hostname or instance only by IP:port.
    pub fn new(apps: &[AppCandidate], template: &NameTemplate) -> Self {
        let mut m = Matcher::default();
        for app in apps {
            if let (Some(port), Some(ip)) = (app.port, app.host_ip.as_deref()) {
                let ip = normalize_address(ip);
                if !ip.is_empty() {
                    m.by_address_port
                        .entry((ip, port))
                        .or_default()
                        .push(app.id);
                }
            }
            if let (Some(host), Some(instance)) = (app.hostname.as_deref(), app.instance.as_deref())
            {
                m.by_name
                    .entry(template.render(host, &app.name, instance))
                    .or_default()
                    .push(app.id);
            }
        }
        m
    }

    /// Links one server. A match by IP:port decides, also when it is
    /// ambiguous (the template is not asked to break the tie); only when no
    /// application has the server's IP:port is the name tried.
    pub fn find(&self, address: &str, port: Option<i32>, server_name: &str) -> Link {
        if let Some(port) = port {
            let key = (normalize_address(address), port);
            if let Some(ids) = self.by_address_port.get(&key) {
                return link_of(ids.clone(), MatchKind::AddressPort);
            }
        }
        match self.by_name.get(server_name) {
            Some(ids) => link_of(ids.clone(), MatchKind::NameTemplate),
            None => Link::Unmatched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(
        id: i64,
        name: &str,
        hostname: &str,
        ip: &str,
        port: Option<i32>,
        instance: &str,
    ) -> AppCandidate {
        AppCandidate {
            id,
            name: name.into(),
            port,
            instance: Some(instance.into()),
            host_ip: Some(ip.into()),
            hostname: Some(hostname.into()),
        }
    }

    fn matcher(apps: &[AppCandidate]) -> Matcher {
        Matcher::new(apps, &NameTemplate::default())
    }

    fn linked(application_id: i64, by: MatchKind) -> Link {
        Link::Linked { application_id, by }
    }

    #[test]
    fn default_template_parses_to_the_default() {
        assert_eq!(
            NameTemplate::parse(DEFAULT_TEMPLATE),
            Ok(NameTemplate::default())
        );
        assert_eq!(
            NameTemplate::default().render("web1", "shop", "1"),
            "web1_shop_1"
        );
        assert_eq!(NameTemplate::default().to_string(), DEFAULT_TEMPLATE);
    }

    #[test]
    fn literal_text_is_kept_around_placeholders() {
        let t = NameTemplate::parse("srv-{app_name}.{instance}@{hostname}:x").unwrap_or_default();
        assert_eq!(t.render("web1", "shop", "2"), "srv-shop.2@web1:x");
        let t: NameTemplate = "{hostname}{instance}".parse().unwrap_or_default();
        assert_eq!(t.render("h", "a", "3"), "h3");
    }

    #[test]
    fn bad_templates_are_refused_with_a_clear_message() {
        let e = NameTemplate::parse("{hostname}_{app}_{instance}").err();
        assert_eq!(
            e,
            Some(TemplateError::UnknownPlaceholder {
                template: "{hostname}_{app}_{instance}".into(),
                found: "app".into(),
                position: 11,
            })
        );
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("unknown placeholder {app} at position 11"),
            "{msg}"
        );
        assert!(
            msg.contains("{hostname}, {app_name} or {instance}"),
            "{msg}"
        );

        for (raw, brace, position) in [
            ("{hostname", '{', 0),
            ("{hostname}_{app_name", '{', 11),
            ("hostname}", '}', 8),
            ("{host{name}", '{', 5),
            ("{hostname}}", '}', 10),
        ] {
            assert_eq!(
                NameTemplate::parse(raw),
                Err(TemplateError::Unbalanced {
                    template: raw.into(),
                    brace,
                    position
                }),
                "{raw}"
            );
        }
        let msg = NameTemplate::parse("a}")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("unbalanced '}' at position 1"), "{msg}");

        assert_eq!(NameTemplate::parse(""), Err(TemplateError::Empty));
        assert!(matches!(
            NameTemplate::parse("static"),
            Err(TemplateError::NoPlaceholder { .. })
        ));
        assert!(matches!(
            NameTemplate::parse("{}"),
            Err(TemplateError::UnknownPlaceholder { .. })
        ));
    }

    #[test]
    fn one_app_at_the_servers_address_and_port_is_linked() {
        let m = matcher(&[
            app(1, "shop", "web1", "10.0.0.1", Some(8080), "1"),
            app(2, "shop", "web1", "10.0.0.1", Some(8081), "2"),
            app(3, "shop", "web2", "10.0.0.2", Some(8080), "1"),
        ]);
        assert_eq!(
            m.find("10.0.0.1", Some(8081), "whatever"),
            linked(2, MatchKind::AddressPort)
        );
    }

    #[test]
    fn address_port_wins_over_the_name() {
        // The name says app 1, the address says app 2: the address decides.
        let m = matcher(&[
            app(1, "shop", "web1", "10.0.0.1", Some(8080), "1"),
            app(2, "cart", "web2", "10.0.0.2", Some(9000), "1"),
        ]);
        assert_eq!(
            m.find("10.0.0.2", Some(9000), "web1_shop_1"),
            linked(2, MatchKind::AddressPort)
        );
    }

    #[test]
    fn several_apps_at_one_address_and_port_are_ambiguous_without_fallback() {
        let m = matcher(&[
            app(7, "shop", "web1", "10.0.0.1", Some(8080), "1"),
            app(3, "cart", "web1", "10.0.0.1", Some(8080), "1"),
        ]);
        // The name would single out app 7, but IP:port already decided.
        assert_eq!(
            m.find("10.0.0.1", Some(8080), "web1_shop_1"),
            Link::Ambiguous(vec![3, 7])
        );
    }

    #[test]
    fn ipv6_is_compared_without_brackets_and_case() {
        let m = matcher(&[
            app(1, "shop", "web6", "[2001:DB8::1]", Some(80), "1"),
            app(2, "shop", "web7", "::1", Some(19101), "1"),
        ]);
        assert_eq!(
            m.find("2001:db8::1", Some(80), "x"),
            linked(1, MatchKind::AddressPort)
        );
        assert_eq!(
            m.find("[2001:db8::1]", Some(80), "x"),
            linked(1, MatchKind::AddressPort)
        );
        assert_eq!(
            m.find("::1", Some(19101), "x"),
            linked(2, MatchKind::AddressPort)
        );
        assert_eq!(
            m.find("0:0:0:0:0:0:0:1", Some(19101), "x"),
            linked(2, MatchKind::AddressPort)
        );
    }

    #[test]
    fn without_an_address_port_match_the_fixture_name_links() {
        // The fixture's web1_shop_1: hostname web1, app shop, instance 1.
        let m = matcher(&[
            app(5, "shop", "web1", "10.0.0.9", None, "1"),
            app(6, "shop", "web1", "10.0.0.1", Some(8080), "2"),
            app(8, "api", "n1", "10.0.0.3", None, "1"),
        ]);
        assert_eq!(
            m.find("127.0.0.1", Some(19001), "web1_shop_1"),
            linked(5, MatchKind::NameTemplate)
        );
        assert_eq!(
            m.find("127.0.0.1", None, "n1_api_1"),
            linked(8, MatchKind::NameTemplate)
        );
        // An app with a port is still found by name when its IP:port does not match.
        assert_eq!(
            m.find("127.0.0.1", Some(19002), "web1_shop_2"),
            linked(6, MatchKind::NameTemplate)
        );
    }

    #[test]
    fn a_port_alone_or_an_address_alone_is_not_a_match() {
        let m = matcher(&[app(1, "shop", "web1", "10.0.0.1", Some(8080), "1")]);
        assert_eq!(m.find("10.0.0.2", Some(8080), "x"), Link::Unmatched);
        assert_eq!(m.find("10.0.0.1", Some(8081), "x"), Link::Unmatched);
        assert_eq!(m.find("10.0.0.1", None, "x"), Link::Unmatched);
    }

    #[test]
    fn several_apps_with_one_rendered_name_are_ambiguous() {
        let m = matcher(&[
            app(4, "shop", "web1", "10.0.0.1", None, "1"),
            app(2, "shop", "web1", "10.0.0.2", None, "1"),
        ]);
        assert_eq!(
            m.find("127.0.0.1", Some(1), "web1_shop_1"),
            Link::Ambiguous(vec![2, 4])
        );
    }

    #[test]
    fn names_match_exactly() {
        let m = matcher(&[app(1, "shop", "web1", "10.0.0.1", None, "1")]);
        assert_eq!(m.find("1.2.3.4", Some(1), "WEB1_shop_1"), Link::Unmatched);
        assert_eq!(m.find("1.2.3.4", Some(1), "web1_shop_10"), Link::Unmatched);
        assert_eq!(m.find("1.2.3.4", Some(1), "web1_shop"), Link::Unmatched);
    }

    #[test]
    fn an_app_without_hostname_or_instance_cannot_match_by_name() {
        let mut no_host = app(1, "shop", "web1", "10.0.0.1", None, "1");
        no_host.hostname = None;
        let mut no_instance = app(2, "cart", "web1", "10.0.0.1", Some(9000), "1");
        no_instance.instance = None;
        let m = matcher(&[no_host, no_instance]);
        assert_eq!(m.find("1.2.3.4", Some(1), "web1_shop_1"), Link::Unmatched);
        assert_eq!(m.find("1.2.3.4", Some(1), "web1_cart_"), Link::Unmatched);
        // …but still by IP:port.
        assert_eq!(
            m.find("10.0.0.1", Some(9000), "x"),
            linked(2, MatchKind::AddressPort)
        );
    }

    #[test]
    fn an_app_without_host_ip_cannot_match_by_address() {
        let mut a = app(1, "shop", "web1", "", Some(8080), "1");
        a.host_ip = None;
        let m = matcher(&[a, app(2, "cart", "web2", "", Some(8080), "1")]);
        assert_eq!(m.find("", Some(8080), "x"), Link::Unmatched);
        assert_eq!(
            m.find("10.0.0.1", Some(8080), "web1_shop_1"),
            linked(1, MatchKind::NameTemplate)
        );
    }

    #[test]
    fn a_configured_template_is_used() {
        let t = NameTemplate::parse("{app_name}-{instance}.{hostname}").unwrap_or_default();
        let m = Matcher::new(&[app(1, "shop", "web1", "10.0.0.1", None, "1")], &t);
        assert_eq!(
            m.find("1.2.3.4", None, "shop-1.web1"),
            linked(1, MatchKind::NameTemplate)
        );
        assert_eq!(m.find("1.2.3.4", None, "web1_shop_1"), Link::Unmatched);
    }

    #[test]
    fn a_duplicate_candidate_is_one_app() {
        let a = app(1, "shop", "web1", "10.0.0.1", Some(80), "1");
        let m = matcher(&[a.clone(), a]);
        assert_eq!(
            m.find("10.0.0.1", Some(80), "x"),
            linked(1, MatchKind::AddressPort)
        );
        assert_eq!(
            m.find("9.9.9.9", Some(80), "web1_shop_1"),
            linked(1, MatchKind::NameTemplate)
        );
    }

    #[test]
    fn no_apps_means_unmatched() {
        let m = matcher(&[]);
        assert_eq!(m.find("10.0.0.1", Some(80), "web1_shop_1"), Link::Unmatched);
    }
}
