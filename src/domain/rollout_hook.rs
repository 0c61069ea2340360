//! The update hook of a rollout (issue 12): what runs on a server between
//! its drain and its return to `ready`. Pure rules: parsing and validating
//! the request's `update` object against the configured [`HookPolicy`], and
//! building the argv of a run. No I/O; the filesystem checks of a playbook
//! (canonical path, existence) are in `rollout::hook::check_playbook`.
//!
//! Nothing here ever goes through a shell: a hook is an argv, and values
//! from the server's row are substituted inside argv elements only.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

mod argv;

pub use argv::{ansible_argv, check_ansible_host, command_argv};

/// The hook's time limit when the request names none (15 minutes).
pub const DEFAULT_TIMEOUT_SECS: u64 = 900;
/// The longest time limit a request may ask for (24 hours).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// The placeholders a `command` hook's argv may use.
pub const PLACEHOLDERS: [&str; 7] = [
    "hostname",
    "address",
    "port",
    "server",
    "backend",
    "instance",
    "application",
];

/// The extra vars an `ansible` hook always gets; they win over the
/// request's own `extra_vars` of the same name.
pub const ANSIBLE_VARS: [&str; 3] = ["haproxy_server", "haproxy_backend", "application"];

/// How a server is updated.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateHook {
    /// `ansible-playbook` with the server's AC host as the only inventory
    /// host; `playbook` is inside the configured playbook directory.
    Ansible {
        playbook: PathBuf,
        extra_vars: Map<String, Value>,
    },
    /// An allow-listed program; its exit code decides.
    Command { argv: Vec<String> },
    /// Nothing runs: the rollout waits for an operator's `continue`.
    Manual,
}

/// A validated `update` object.
#[derive(Debug, Clone, PartialEq)]
pub struct HookSpec {
    pub hook: UpdateHook,
    /// After this long the hook's whole process group is killed.
    pub timeout_secs: u64,
}

/// What the server's row gives the placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookTarget {
    /// The AC host the application runs on (`servers.hostname`).
    pub hostname: String,
    pub address: String,
    pub port: Option<i32>,
    pub server: String,
    pub backend: String,
    pub instance: String,
    pub application: Option<String>,
}

/// Where hooks may come from (config `[rollout]`): playbooks only inside
/// `playbook_dir`, `command` argv[0] only one of `commands` (absolute paths).
/// An operator must not be able to run an arbitrary program on the worker
/// hosts through the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookPolicy {
    /// `None`: `ansible` hooks are refused.
    pub playbook_dir: Option<PathBuf>,
    /// Empty: `command` hooks are refused.
    pub commands: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnsibleBody {
    playbook: String,
    #[serde(default)]
    extra_vars: Map<String, Value>,
    timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    argv: Vec<String>,
    timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManualBody {}

/// Parses and validates the request's `update` JSON. The error is a sentence
/// naming the field, meant as a 422 message. A playbook is checked here only
/// by its path's shape; `rollout::hook::validate_update` adds the
/// filesystem checks (canonical path inside the directory, file exists).
pub fn parse_update(v: &Value, policy: &HookPolicy) -> Result<HookSpec, String> {
    let obj = v
        .as_object()
        .ok_or("update must be an object with a `kind` (ansible, command or manual)")?;
    let kind = match obj.get("kind") {
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err("update.kind must be a string: ansible, command or manual".into()),
        None => return Err("update.kind is missing: expected ansible, command or manual".into()),
    };
    let mut body = obj.clone();
    body.remove("kind");
    let body = Value::Object(body);
    match kind {
        "ansible" => parse_ansible(body, policy),
        "command" => parse_command(body, policy),
        "manual" => {
            fields::<ManualBody>(body)?;
            Ok(HookSpec {
                hook: UpdateHook::Manual,
                timeout_secs: DEFAULT_TIMEOUT_SECS,
            })
        }
        other => Err(format!(
            "update.kind `{other}` is unknown: expected ansible, command or manual"
        )),
    }
}

fn fields<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, String> {
    serde_json::from_value(body).map_err(|e| format!("update: {e}"))
}

fn parse_ansible(body: Value, policy: &HookPolicy) -> Result<HookSpec, String> {
    let b: AnsibleBody = fields(body)?;
    if let Some(key) = b.extra_vars.keys().find(|k| !is_variable_name(k)) {
        return Err(format!(
            "update.extra_vars key `{key}` is not an Ansible variable name \
             (a letter or `_`, then letters, digits or `_`)"
        ));
    }
    Ok(HookSpec {
        hook: UpdateHook::Ansible {
            playbook: playbook_path(policy, &b.playbook)?,
            extra_vars: b.extra_vars,
        },
        timeout_secs: timeout(b.timeout_secs)?,
    })
}

fn parse_command(body: Value, policy: &HookPolicy) -> Result<HookSpec, String> {
    if body.get("argv").is_some_and(Value::is_string) {
        return Err("update.argv must be an array of strings, one per argument \
                    (a shell command line is not accepted: hooks never run through a shell)"
            .into());
    }
    let b: CommandBody = fields(body)?;
    check_argv(&b.argv, policy)?;
    Ok(HookSpec {
        hook: UpdateHook::Command { argv: b.argv },
        timeout_secs: timeout(b.timeout_secs)?,
    })
}

fn is_variable_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn timeout(secs: Option<u64>) -> Result<u64, String> {
    match secs.unwrap_or(DEFAULT_TIMEOUT_SECS) {
        s @ 1..=MAX_TIMEOUT_SECS => Ok(s),
        s => Err(format!(
            "update.timeout_secs must be between 1 and {MAX_TIMEOUT_SECS} (24 h), got {s}"
        )),
    }
}

/// The playbook's path inside `playbook_dir`, by its shape only: relative
/// paths are taken from the directory, absolute ones must lie under it, and
/// no `..` is accepted anywhere.
pub fn playbook_path(policy: &HookPolicy, raw: &str) -> Result<PathBuf, String> {
    let dir = policy
        .playbook_dir
        .as_ref()
        .ok_or("update.kind `ansible` is not enabled: no rollout.playbook_dir is configured")?;
    let path = Path::new(raw);
    if raw.is_empty() || raw.contains('\0') {
        return Err("update.playbook must be a non-empty path".into());
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("update.playbook `{raw}` must not contain `..`"));
    }
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    if !full.starts_with(dir) || full == *dir {
        return Err(format!(
            "update.playbook `{raw}` is not a file inside the playbook directory {}",
            dir.display()
        ));
    }
    Ok(full)
}

fn check_argv(argv: &[String], policy: &HookPolicy) -> Result<(), String> {
    let program = argv
        .first()
        .ok_or("update.argv is empty: it needs at least the program to run")?;
    if !policy
        .commands
        .iter()
        .any(|c| c.as_os_str() == program.as_str())
    {
        return Err(format!(
            "update.argv[0] `{program}` is not an allowed command (rollout.commands: {})",
            allowed_list(&policy.commands)
        ));
    }
    for (i, arg) in argv.iter().enumerate() {
        if arg.contains('\0') {
            return Err(format!("update.argv[{i}] contains a NUL character"));
        }
        if let Some(name) = argv::placeholder_names(arg).find(|n| !PLACEHOLDERS.contains(n)) {
            return Err(format!(
                "update.argv[{i}] uses the unknown placeholder `{{{name}}}`: known are {}",
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
            ));
        }
    }
    Ok(())
}

fn allowed_list(commands: &[PathBuf]) -> String {
    if commands.is_empty() {
        return "none configured".into();
    }
    let names: Vec<_> = commands.iter().map(|c| c.display().to_string()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests;
