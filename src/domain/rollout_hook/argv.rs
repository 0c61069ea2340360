//! Building the argv of a hook run from a validated hook and the server's
//! row: placeholders for `command` hooks, the `ansible-playbook` call for
//! `ansible` hooks.

use std::path::Path;

use serde_json::{Map, Value};

use super::HookTarget;

/// One piece of an argv element: literal text or a placeholder's name.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// Splits an element into text and `{name}` placeholders, where a name is
/// one or more of `[A-Za-z0-9_]`. Any other brace is text (`{"a": 1}`).
fn pieces(s: &str) -> impl Iterator<Item = Piece<'_>> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if let Some(name) = leading_placeholder(rest) {
            rest = &rest[name.len() + 2..];
            return Some(Piece::Placeholder(name));
        }
        // Text runs up to the next brace that starts a placeholder.
        let end = rest
            .char_indices()
            .skip(1)
            .find(|&(i, _)| leading_placeholder(&rest[i..]).is_some())
            .map_or(rest.len(), |(i, _)| i);
        let (text, tail) = rest.split_at(end);
        rest = tail;
        Some(Piece::Text(text))
    })
}

fn leading_placeholder(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('{')?;
    let len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    (len > 0 && inner[len..].starts_with('}')).then(|| &inner[..len])
}

pub(super) fn placeholder_names(s: &str) -> impl Iterator<Item = &str> {
    pieces(s).filter_map(|p| match p {
        Piece::Placeholder(n) => Some(n),
        Piece::Text(_) => None,
    })
}

fn placeholder_value(name: &str, t: &HookTarget) -> Option<String> {
    Some(match name {
        "hostname" => t.hostname.clone(),
        "address" => t.address.clone(),
        "port" => t.port.map(|p| p.to_string()).unwrap_or_default(),
        "server" => t.server.clone(),
        "backend" => t.backend.clone(),
        "instance" => t.instance.clone(),
        "application" => t.application.clone().unwrap_or_default(),
        _ => return None,
    })
}

/// Placeholders {hostname} {address} {port} {server} {backend} {instance}
/// {application} substituted inside argv elements only: an element stays
/// one element, a substituted value is never scanned again. A missing port
/// or application is the empty string; an unknown placeholder (refused by
/// [`parse_update`](super::parse_update)) is left as it is.
pub fn command_argv(argv: &[String], t: &HookTarget) -> Vec<String> {
    argv.iter()
        .map(|arg| {
            pieces(arg)
                .map(|p| match p {
                    Piece::Text(s) => s.to_owned(),
                    Piece::Placeholder(n) => {
                        placeholder_value(n, t).unwrap_or_else(|| format!("{{{n}}}"))
                    }
                })
                .collect()
        })
        .collect()
}

/// `ansible-playbook -i "<hostname>," --limit <hostname> -e <json> <playbook>`
/// where the JSON holds the request's `extra_vars` plus `haproxy_server`,
/// `haproxy_backend` and `application` (these three win; a missing
/// application is null). Every string in it is marked unsafe for Ansible
/// (`{"__ansible_unsafe": …}`), so a value holding `{{ … }}` is data and is
/// never evaluated as a template. Check the hostname first with
/// [`check_ansible_host`]: a comma in it would add inventory hosts.
pub fn ansible_argv(
    ansible_playbook: &Path,
    playbook: &Path,
    extra_vars: &Map<String, Value>,
    t: &HookTarget,
) -> Vec<String> {
    let mut vars = extra_vars.clone();
    vars.insert("haproxy_server".into(), t.server.clone().into());
    vars.insert("haproxy_backend".into(), t.backend.clone().into());
    vars.insert("application".into(), t.application.clone().into());
    let vars = unsafe_strings(Value::Object(vars));
    vec![
        ansible_playbook.display().to_string(),
        "-i".into(),
        format!("{},", t.hostname),
        "--limit".into(),
        t.hostname.clone(),
        "-e".into(),
        vars.to_string(),
        playbook.display().to_string(),
    ]
}

/// Wraps every string (keys stay as they are) in Ansible's unsafe marker.
fn unsafe_strings(v: Value) -> Value {
    match v {
        Value::String(s) => {
            let mut m = Map::new();
            m.insert("__ansible_unsafe".into(), Value::String(s));
            Value::Object(m)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(unsafe_strings).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, unsafe_strings(v))).collect())
        }
        other => other,
    }
}

/// A host name Ansible can take as the only inventory host and `--limit`
/// pattern without reading it as more than one host: letters, digits, `.`,
/// `-` and `_`, starting with a letter or digit.
pub fn check_ansible_host(hostname: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let first_ok = hostname
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && hostname.chars().all(ok_char) {
        Ok(())
    } else {
        Err(format!(
            "host name `{hostname}` cannot be an Ansible inventory host \
             (letters, digits, `.`, `-`, `_` only, starting with a letter or digit)"
        ))
    }
}
