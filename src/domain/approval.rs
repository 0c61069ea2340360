//! Four-eyes approval (issue 13, part 2): the policy of which requests need
//! an approval, its evaluation (a pure function, [`evaluate`]), and the
//! statuses of an approval. No I/O: the API and the worker read the policy
//! from the database and ask [`evaluate`] about a request they describe as a
//! [`Subject`].

use std::fmt;
use std::str::FromStr;

use super::action::find;
use super::state::AdminState;

/// `approval.ttl_secs`'s default: an approval not decided within an hour expires.
pub const DEFAULT_TTL_SECS: u64 = 3600;

/// Longest pattern accepted.
const MAX_PATTERN_LEN: usize = 128;
/// Most patterns per list.
const MAX_PATTERNS: usize = 100;

/// A glob-like pattern over instance or backend names: HAProxy's identifier
/// characters `[A-Za-z0-9._:-]`, `*` for any run of them (also none) and `?`
/// for exactly one. Parsing is the only way to get one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

/// A pattern that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPolicy(pub String);

impl Pattern {
    /// # Errors
    /// [`InvalidPolicy`] naming the pattern when it is empty, longer than
    /// 128 characters or has a character that is not an identifier
    /// character, `*` or `?`.
    pub fn parse(raw: &str) -> Result<Self, InvalidPolicy> {
        let shown: String = raw.chars().take(64).collect();
        if raw.is_empty() || raw.len() > MAX_PATTERN_LEN {
            return Err(InvalidPolicy(format!(
                "pattern {shown:?} must be 1 to {MAX_PATTERN_LEN} characters"
            )));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._:-*?".contains(*c)))
        {
            return Err(InvalidPolicy(format!(
                "pattern {shown:?} has {bad:?}; only A-Z a-z 0-9 . _ : - and the wildcards * ? \
                 are allowed"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// Iterative glob with one backtrack point (the last `*`): linear enough for
/// names of at most a few hundred bytes.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(c) if *c == b'?' || *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// Which requests need an approval. The default needs none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Any action or batch with `force: true`.
    pub force_actions: bool,
    /// A batch over this many servers.
    pub batch_max_servers: Option<u32>,
    /// A rollout over this many servers.
    pub rollout_max_servers: Option<u32>,
    /// `maint` of a server of an instance whose name matches one of these.
    pub maint_instances: Vec<Pattern>,
    /// `maint` of a server of a backend whose name matches one of these.
    pub maint_backends: Vec<Pattern>,
    /// Seconds an approval waits before it expires.
    pub ttl_secs: u64,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        Self {
            force_actions: false,
            batch_max_servers: None,
            rollout_max_servers: None,
            maint_instances: Vec::new(),
            maint_backends: Vec::new(),
            ttl_secs: DEFAULT_TTL_SECS,
        }
    }
}

/// The policy as stored and sent (JSON), before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    #[serde(default)]
    pub force_actions: bool,
    #[serde(default)]
    pub batch_max_servers: Option<u32>,
    #[serde(default)]
    pub rollout_max_servers: Option<u32>,
    #[serde(default)]
    pub maint_instances: Vec<String>,
    #[serde(default)]
    pub maint_backends: Vec<String>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

impl ApprovalPolicy {
    /// Validates a policy document.
    ///
    /// # Errors
    /// [`InvalidPolicy`] naming the field: a bad pattern, too many patterns,
    /// a `ttl_secs` outside 1..=604800 (a week).
    pub fn parse(doc: &PolicyDocument) -> Result<Self, InvalidPolicy> {
        let patterns = |field: &str, raw: &[String]| -> Result<Vec<Pattern>, InvalidPolicy> {
            if raw.len() > MAX_PATTERNS {
                return Err(InvalidPolicy(format!(
                    "{field}: at most {MAX_PATTERNS} patterns"
                )));
            }
            raw.iter()
                .map(|p| Pattern::parse(p).map_err(|e| InvalidPolicy(format!("{field}: {e}"))))
                .collect()
        };
        let ttl_secs = doc.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
        if !(1..=604_800).contains(&ttl_secs) {
            return Err(InvalidPolicy(format!(
                "ttl_secs: {ttl_secs} is not within 1..=604800 (a week)"
            )));
        }
        Ok(Self {
            force_actions: doc.force_actions,
            batch_max_servers: doc.batch_max_servers,
            rollout_max_servers: doc.rollout_max_servers,
            maint_instances: patterns("maint_instances", &doc.maint_instances)?,
            maint_backends: patterns("maint_backends", &doc.maint_backends)?,
            ttl_secs,
        })
    }

    /// The document this policy is stored as (`ttl_secs` always present).
    pub fn document(&self) -> PolicyDocument {
        let strings = |v: &[Pattern]| v.iter().map(|p| p.as_str().to_owned()).collect();
        PolicyDocument {
            force_actions: self.force_actions,
            batch_max_servers: self.batch_max_servers,
            rollout_max_servers: self.rollout_max_servers,
            maint_instances: strings(&self.maint_instances),
            maint_backends: strings(&self.maint_backends),
            ttl_secs: Some(self.ttl_secs),
        }
    }
}

/// Where a server is, by name, for the `maint_*` rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub instance: String,
    pub backend: String,
}

/// A request, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject<'a> {
    /// One server's action.
    Action {
        action: AdminState,
        force: bool,
        place: &'a Place,
    },
    /// A batch: its live servers' places (one per server).
    Batch {
        action: AdminState,
        force: bool,
        places: &'a [Place],
    },
    /// A rollout of this many servers.
    Rollout { servers: usize },
}

/// A rule a request matched, and why, for the approver.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MatchedRule {
    /// `force_actions`, `batch_max_servers`, `rollout_max_servers`,
    /// `maint_instances` or `maint_backends`.
    pub rule: String,
    pub detail: String,
}

fn rule(rule: &str, detail: String) -> MatchedRule {
    MatchedRule {
        rule: rule.to_owned(),
        detail,
    }
}

/// The rules of `policy` that `subject` matches, in the policy's order;
/// empty: it runs without approval.
pub fn evaluate(policy: &ApprovalPolicy, subject: &Subject<'_>) -> Vec<MatchedRule> {
    let mut out = Vec::new();
    let (action, force, places, servers) = match subject {
        Subject::Action {
            action,
            force,
            place,
        } => (Some(*action), *force, std::slice::from_ref(*place), 1usize),
        Subject::Batch {
            action,
            force,
            places,
        } => (Some(*action), *force, *places, places.len()),
        Subject::Rollout { servers } => (None, false, &[][..], *servers),
    };
    if policy.force_actions && force {
        out.push(rule(
            "force_actions",
            "force: true (skips the last-ready-server guard)".into(),
        ));
    }
    match (
        subject,
        policy.batch_max_servers,
        policy.rollout_max_servers,
    ) {
        (Subject::Batch { .. }, Some(max), _) if servers > max as usize => out.push(rule(
            "batch_max_servers",
            format!("a batch of {servers} servers, over {max}"),
        )),
        (Subject::Rollout { .. }, _, Some(max)) if servers > max as usize => out.push(rule(
            "rollout_max_servers",
            format!("a rollout of {servers} servers, over {max}"),
        )),
        _ => {}
    }
    if action == Some(AdminState::Maint) {
        if let Some(m) = first_match(&policy.maint_instances, places, |p| &p.instance) {
            out.push(rule(
                "maint_instances",
                format!("maint on instance {} (pattern {})", m.1, m.0.as_str()),
            ));
        }
        if let Some(m) = first_match(&policy.maint_backends, places, |p| &p.backend) {
            out.push(rule(
                "maint_backends",
                format!("maint in backend {} (pattern {})", m.1, m.0.as_str()),
            ));
        }
    }
    out
}

/// The first (pattern, name) where a place's name matches a pattern.
fn first_match<'a>(
    patterns: &'a [Pattern],
    places: &'a [Place],
    name: impl Fn(&Place) -> &String,
) -> Option<(&'a Pattern, &'a str)> {
    places.iter().find_map(|place| {
        let n = name(place);
        patterns
            .iter()
            .find(|p| p.matches(n))
            .map(|p| (p, n.as_str()))
    })
}

/// What an approval is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    Action,
    Batch,
    Rollout,
}

impl ApprovalKind {
    pub const ALL: [ApprovalKind; 3] = [
        ApprovalKind::Action,
        ApprovalKind::Batch,
        ApprovalKind::Rollout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalKind::Action => "action",
            ApprovalKind::Batch => "batch",
            ApprovalKind::Rollout => "rollout",
        }
    }
}

impl fmt::Display for ApprovalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApprovalKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        find(&ApprovalKind::ALL, s, ApprovalKind::as_str, "approval kind")
    }
}

/// `haproxy_approvals.status`: `pending` until decided or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl ApprovalStatus {
    pub const ALL: [ApprovalStatus; 4] = [
        ApprovalStatus::Pending,
        ApprovalStatus::Approved,
        ApprovalStatus::Rejected,
        ApprovalStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Expired => "expired",
        }
    }
}

impl fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApprovalStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        find(
            &ApprovalStatus::ALL,
            s,
            ApprovalStatus::as_str,
            "approval status",
        )
    }
}

/// Whether a request by `actor` goes through the policy at all: system
/// actors (`system:…`, e.g. `system:reload-restore`) never wait; the
/// actions of a batch or rollout are covered by the whole request's
/// approval and are not asked about (the caller knows those).
pub fn actor_is_exempt(actor: &str) -> bool {
    actor.starts_with("system:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(instance: &str, backend: &str) -> Place {
        Place {
            instance: instance.into(),
            backend: backend.into(),
        }
    }

    fn policy(doc: serde_json::Value) -> ApprovalPolicy {
        let doc: PolicyDocument = serde_json::from_value(doc).expect("document");
        ApprovalPolicy::parse(&doc).expect("valid policy")
    }

    fn rules(found: &[MatchedRule]) -> Vec<&str> {
        found.iter().map(|r| r.rule.as_str()).collect()
    }

    /// The rules a `maint` of a server in (instance, backend) matches.
    fn maint_rules(p: &ApprovalPolicy, instance: &str, backend: &str) -> Vec<MatchedRule> {
        let place = place(instance, backend);
        evaluate(
            p,
            &Subject::Action {
                action: AdminState::Maint,
                force: false,
                place: &place,
            },
        )
    }

    #[test]
    fn the_default_policy_needs_no_approval_for_anything() {
        let p = ApprovalPolicy::default();
        let web = place("lb-1", "web");
        let many: Vec<Place> = (0..1000).map(|_| web.clone()).collect();
        for subject in [
            Subject::Action {
                action: AdminState::Maint,
                force: true,
                place: &web,
            },
            Subject::Batch {
                action: AdminState::Maint,
                force: true,
                places: &many,
            },
            Subject::Rollout { servers: 1000 },
        ] {
            assert!(evaluate(&p, &subject).is_empty(), "{subject:?}");
        }
        assert_eq!(p.ttl_secs, 3600);
        assert_eq!(policy(serde_json::json!({})), p);
    }

    #[test]
    fn force_actions_matches_forced_actions_and_batches_only() {
        let p = policy(serde_json::json!({"force_actions": true}));
        let web = place("lb-1", "web");
        let forced = Subject::Action {
            action: AdminState::Drain,
            force: true,
            place: &web,
        };
        assert_eq!(rules(&evaluate(&p, &forced)), ["force_actions"]);
        let plain = Subject::Action {
            action: AdminState::Drain,
            force: false,
            place: &web,
        };
        assert!(evaluate(&p, &plain).is_empty());
        let batch = [web.clone()];
        let forced_batch = Subject::Batch {
            action: AdminState::Ready,
            force: true,
            places: &batch,
        };
        assert_eq!(rules(&evaluate(&p, &forced_batch)), ["force_actions"]);
        assert!(evaluate(&p, &Subject::Rollout { servers: 5 }).is_empty());
    }

    #[test]
    fn batch_max_servers_matches_batches_over_n() {
        let p = policy(serde_json::json!({"batch_max_servers": 2}));
        let two = vec![place("lb-1", "web"); 2];
        let three = vec![place("lb-1", "web"); 3];
        let batch = |places| Subject::Batch {
            action: AdminState::Drain,
            force: false,
            places,
        };
        assert!(evaluate(&p, &batch(&two)).is_empty());
        let found = evaluate(&p, &batch(&three));
        assert_eq!(rules(&found), ["batch_max_servers"]);
        assert_eq!(found[0].detail, "a batch of 3 servers, over 2");
        // Not a rollout rule.
        assert!(evaluate(&p, &Subject::Rollout { servers: 3 }).is_empty());
    }

    #[test]
    fn rollout_max_servers_matches_rollouts_over_n() {
        let p = policy(serde_json::json!({"rollout_max_servers": 1}));
        assert!(evaluate(&p, &Subject::Rollout { servers: 1 }).is_empty());
        assert_eq!(
            rules(&evaluate(&p, &Subject::Rollout { servers: 2 })),
            ["rollout_max_servers"]
        );
        let many = vec![place("lb-1", "web"); 5];
        let batch = Subject::Batch {
            action: AdminState::Drain,
            force: false,
            places: &many,
        };
        assert!(evaluate(&p, &batch).is_empty());
    }

    #[test]
    fn maint_instances_matches_maint_on_matching_instances() {
        let p = policy(serde_json::json!({"maint_instances": ["prod-*", "edge-?"]}));
        let found = maint_rules(&p, "prod-lb-1", "web");
        assert_eq!(rules(&found), ["maint_instances"]);
        assert!(found[0].detail.contains("prod-lb-1"), "{found:?}");
        assert_eq!(
            rules(&maint_rules(&p, "edge-1", "web")),
            ["maint_instances"]
        );
        assert!(maint_rules(&p, "edge-12", "web").is_empty());
        assert!(maint_rules(&p, "staging-1", "web").is_empty());
        let prod = place("prod-lb-1", "web");
        let drain = Subject::Action {
            action: AdminState::Drain,
            force: false,
            place: &prod,
        };
        assert!(evaluate(&p, &drain).is_empty(), "only maint is matched");
        let mixed = [place("staging-1", "web"), place("prod-2", "api")];
        let batch = Subject::Batch {
            action: AdminState::Maint,
            force: false,
            places: &mixed,
        };
        assert_eq!(rules(&evaluate(&p, &batch)), ["maint_instances"]);
    }

    #[test]
    fn maint_backends_matches_maint_in_matching_backends() {
        let p = policy(serde_json::json!({"maint_backends": ["payments", "db_*"]}));
        assert_eq!(
            rules(&maint_rules(&p, "lb", "payments")),
            ["maint_backends"]
        );
        assert_eq!(rules(&maint_rules(&p, "lb", "db_main")), ["maint_backends"]);
        assert!(maint_rules(&p, "lb", "payments2").is_empty());
        assert!(maint_rules(&p, "lb", "web").is_empty());
    }

    #[test]
    fn several_rules_are_all_recorded() {
        let p = policy(serde_json::json!({
            "force_actions": true, "batch_max_servers": 1,
            "maint_instances": ["*"], "maint_backends": ["w*"]
        }));
        let two = vec![place("lb", "web"); 2];
        let batch = Subject::Batch {
            action: AdminState::Maint,
            force: true,
            places: &two,
        };
        assert_eq!(
            rules(&evaluate(&p, &batch)),
            [
                "force_actions",
                "batch_max_servers",
                "maint_instances",
                "maint_backends"
            ]
        );
    }

    #[test]
    fn globs_match_whole_names() {
        let m = |p: &str, n: &str| Pattern::parse(p).expect("pattern").matches(n);
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("web", "web"));
        assert!(!m("web", "web1"));
        assert!(m("w*b*1", "wxxbyy1"));
        assert!(!m("w*b*1", "wxxbyy2"));
        assert!(m("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaab"));
        assert!(!m("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaa"));
        assert!(m("lb-?", "lb-1"));
        assert!(!m("lb-?", "lb-"));
    }

    #[test]
    fn bad_policies_are_refused_with_the_field() {
        let bad = |doc: serde_json::Value| {
            let doc: PolicyDocument = serde_json::from_value(doc).expect("document");
            ApprovalPolicy::parse(&doc).expect_err("invalid").0
        };
        let e = bad(serde_json::json!({"maint_backends": ["web", "a b"]}));
        assert!(e.starts_with("maint_backends: pattern \"a b\""), "{e}");
        assert!(bad(serde_json::json!({"maint_instances": [""]})).starts_with("maint_instances"));
        assert!(bad(serde_json::json!({"maint_instances": ["x[0]"]})).contains("'['"));
        assert!(
            bad(serde_json::json!({"maint_instances": ["x".repeat(129)]})).contains("1 to 128")
        );
        assert!(bad(serde_json::json!({"ttl_secs": 0})).starts_with("ttl_secs"));
        assert!(
            serde_json::from_value::<PolicyDocument>(serde_json::json!({"forse_actions": true}))
                .is_err()
        );
        let p = policy(serde_json::json!({"maint_backends": ["web"], "ttl_secs": 5}));
        assert_eq!(ApprovalPolicy::parse(&p.document()), Ok(p));
    }

    #[test]
    fn statuses_and_kinds_round_trip_and_system_actors_are_exempt() {
        for s in ApprovalStatus::ALL {
            assert_eq!(s.as_str().parse::<ApprovalStatus>(), Ok(s));
        }
        for k in ApprovalKind::ALL {
            assert_eq!(k.as_str().parse::<ApprovalKind>(), Ok(k));
        }
        assert!("done".parse::<ApprovalStatus>().is_err());
        assert!(actor_is_exempt("system:reload-restore"));
        assert!(!actor_is_exempt("user:alice"));
        assert!(!actor_is_exempt("ac:deploy-job-7"));
    }
}
