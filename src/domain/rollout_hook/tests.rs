use serde_json::json;

use super::*;

fn policy() -> HookPolicy {
    HookPolicy {
        playbook_dir: Some(PathBuf::from("/etc/haproxy-control/playbooks")),
        commands: vec![PathBuf::from("/usr/local/bin/deploy-app")],
    }
}

fn target() -> HookTarget {
    HookTarget {
        hostname: "app-07".into(),
        address: "10.0.0.7".into(),
        port: Some(8080),
        server: "app-07_shop_1".into(),
        backend: "web".into(),
        instance: "lb-1".into(),
        application: Some("shop".into()),
    }
}

fn err(v: Value) -> String {
    parse_update(&v, &policy()).expect_err("refused")
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

#[test]
fn parses_each_kind_with_the_default_timeout() {
    let a = parse_update(
        &json!({"kind": "ansible", "playbook": "update.yml", "extra_vars": {"version": "2"}}),
        &policy(),
    )
    .expect("ansible");
    let UpdateHook::Ansible {
        playbook,
        extra_vars,
    } = a.hook
    else {
        panic!("not ansible: {a:?}")
    };
    assert_eq!(
        playbook,
        Path::new("/etc/haproxy-control/playbooks/update.yml")
    );
    assert_eq!(extra_vars.get("version"), Some(&json!("2")));
    assert_eq!(a.timeout_secs, DEFAULT_TIMEOUT_SECS);

    let c = parse_update(
        &json!({"kind": "command", "argv": ["/usr/local/bin/deploy-app", "{hostname}"], "timeout_secs": 60}),
        &policy(),
    )
    .expect("command");
    assert_eq!(
        c.hook,
        UpdateHook::Command {
            argv: strings(&["/usr/local/bin/deploy-app", "{hostname}"])
        }
    );
    assert_eq!(c.timeout_secs, 60);

    let m = parse_update(&json!({"kind": "manual"}), &policy()).expect("manual");
    assert_eq!(m.hook, UpdateHook::Manual);
}

#[test]
fn an_absolute_playbook_inside_the_directory_is_accepted() {
    let s = parse_update(
        &json!({"kind": "ansible", "playbook": "/etc/haproxy-control/playbooks/a/b.yml"}),
        &policy(),
    )
    .expect("inside");
    assert!(matches!(s.hook, UpdateHook::Ansible { .. }));
}

#[test]
fn bad_kinds_and_shapes_are_named() {
    assert!(err(json!({"kind": "shell", "cmd": "x"})).contains("update.kind `shell` is unknown"));
    assert!(err(json!({"argv": ["x"]})).contains("update.kind is missing"));
    assert!(err(json!({"kind": 3})).contains("update.kind must be a string"));
    assert!(err(json!("manual")).contains("update must be an object"));
    assert!(err(json!({"kind": "manual", "argv": []})).contains("unknown field `argv`"));
    assert!(
        err(json!({"kind": "ansible", "playbook": "a.yml", "vars": {}}))
            .contains("unknown field `vars`")
    );
    assert!(err(json!({"kind": "ansible"})).contains("missing field `playbook`"));
    assert!(
        err(json!({"kind": "ansible", "playbook": "a.yml", "extra_vars": []}))
            .starts_with("update: ")
    );
}

#[test]
fn extra_vars_keys_are_variable_names() {
    for key in ["1x", "a-b", "", "a b", "x.y"] {
        let e = err(json!({"kind": "ansible", "playbook": "u.yml", "extra_vars": {key: 1}}));
        assert!(e.contains("update.extra_vars key"), "{key}: {e}");
    }
    let ok =
        json!({"kind": "ansible", "playbook": "u.yml", "extra_vars": {"_a1": 1, "app_dir": "/x"}});
    parse_update(&ok, &policy()).expect("plain names");
}

#[test]
fn a_shell_string_is_not_an_argv() {
    let e =
        err(json!({"kind": "command", "argv": "/usr/local/bin/deploy-app {hostname}; rm -rf /"}));
    assert!(e.contains("update.argv must be an array of strings"), "{e}");
    assert!(e.contains("shell"), "{e}");
}

#[test]
fn argv_must_name_an_allowed_program() {
    assert!(err(json!({"kind": "command", "argv": []})).contains("update.argv is empty"));
    let e = err(json!({"kind": "command", "argv": ["/bin/sh", "-c", "id"]}));
    assert!(
        e.contains("update.argv[0] `/bin/sh` is not an allowed command"),
        "{e}"
    );
    assert!(e.contains("/usr/local/bin/deploy-app"), "{e}");
    // Not by a relative name, nor by a placeholder.
    assert!(err(json!({"kind": "command", "argv": ["deploy-app"]})).contains("argv[0]"));
    assert!(err(json!({"kind": "command", "argv": ["{hostname}"]})).contains("argv[0]"));
    let none = HookPolicy::default();
    let e =
        parse_update(&json!({"kind": "command", "argv": ["/bin/true"]}), &none).expect_err("none");
    assert!(e.contains("none configured"), "{e}");
}

#[test]
fn unknown_placeholders_are_refused_but_other_braces_are_text() {
    let e = err(json!({"kind": "command", "argv": ["/usr/local/bin/deploy-app", "--host={foo}"]}));
    assert!(
        e.contains("update.argv[1] uses the unknown placeholder `{foo}`"),
        "{e}"
    );
    assert!(e.contains("{hostname}"), "{e}");
    let ok = json!({"kind": "command", "argv": ["/usr/local/bin/deploy-app", "{\"a\": 1}", "{}", "{a b}"]});
    parse_update(&ok, &policy()).expect("braces that are no placeholder are text");
}

#[test]
fn playbooks_stay_inside_the_directory() {
    for p in [
        "../x.yml",
        "a/../../x.yml",
        "/etc/passwd",
        "/etc/haproxy-control/playbooks",
        "",
    ] {
        let e = err(json!({"kind": "ansible", "playbook": p}));
        assert!(e.contains("update.playbook"), "{p}: {e}");
    }
    let e = parse_update(
        &json!({"kind": "ansible", "playbook": "a.yml"}),
        &HookPolicy::default(),
    )
    .expect_err("disabled");
    assert!(e.contains("no rollout.playbook_dir"), "{e}");
}

#[test]
fn timeouts_are_bounded() {
    for t in [0, MAX_TIMEOUT_SECS + 1] {
        let e = err(
            json!({"kind": "command", "argv": ["/usr/local/bin/deploy-app"], "timeout_secs": t}),
        );
        assert!(
            e.contains("update.timeout_secs must be between 1 and 86400"),
            "{e}"
        );
    }
    let e =
        err(json!({"kind": "command", "argv": ["/usr/local/bin/deploy-app"], "timeout_secs": -1}));
    assert!(e.starts_with("update: "), "{e}");
    let max = json!({"kind": "ansible", "playbook": "u.yml", "timeout_secs": MAX_TIMEOUT_SECS});
    assert_eq!(
        parse_update(&max, &policy()).expect("max").timeout_secs,
        MAX_TIMEOUT_SECS
    );
}

#[test]
fn placeholders_are_substituted_inside_elements() {
    let argv = strings(&[
        "/usr/local/bin/deploy-app",
        "--host={hostname}",
        "{address}:{port}",
        "{server}/{backend}@{instance}",
        "{application}",
        "{nope}",
        "{",
    ]);
    assert_eq!(
        command_argv(&argv, &target()),
        strings(&[
            "/usr/local/bin/deploy-app",
            "--host=app-07",
            "10.0.0.7:8080",
            "app-07_shop_1/web@lb-1",
            "shop",
            "{nope}",
            "{",
        ])
    );
    let bare = HookTarget {
        port: None,
        application: None,
        ..target()
    };
    assert_eq!(
        command_argv(&strings(&["{port}", "a{application}b"]), &bare),
        strings(&["", "ab"])
    );
}

#[test]
fn hostile_values_stay_one_element_and_are_not_scanned_again() {
    let t = HookTarget {
        server: "x; rm -rf /".into(),
        hostname: "h {address} $(id)".into(),
        application: Some("{server}".into()),
        ..target()
    };
    let argv = strings(&[
        "/usr/local/bin/deploy-app",
        "{server}",
        "{hostname}",
        "{application}",
    ]);
    let out = command_argv(&argv, &t);
    assert_eq!(out.len(), 4);
    assert_eq!(out[1], "x; rm -rf /");
    assert_eq!(out[2], "h {address} $(id)");
    assert_eq!(out[3], "{server}");
}

#[test]
fn ansible_argv_targets_only_the_host_and_its_vars_win() {
    let mut vars = Map::new();
    vars.insert("version".into(), json!("v2"));
    vars.insert("haproxy_server".into(), json!("spoofed"));
    vars.insert(
        "nested".into(),
        json!({"n": 1, "l": ["{{ lookup('pipe', 'id') }}"]}),
    );
    let argv = ansible_argv(
        Path::new("/opt/ansible/bin/ansible-playbook"),
        Path::new("/pb/update.yml"),
        &vars,
        &target(),
    );
    assert_eq!(
        argv[..6],
        strings(&[
            "/opt/ansible/bin/ansible-playbook",
            "-i",
            "app-07,",
            "--limit",
            "app-07",
            "-e"
        ])
    );
    assert_eq!(argv[7], "/pb/update.yml");
    let e: Value = serde_json::from_str(&argv[6]).expect("json");
    let un = |s: &str| json!({"__ansible_unsafe": s});
    assert_eq!(e["version"], un("v2"));
    assert_eq!(e["haproxy_server"], un("app-07_shop_1"));
    assert_eq!(e["haproxy_backend"], un("web"));
    assert_eq!(e["application"], un("shop"));
    assert_eq!(
        e["nested"],
        json!({"n": 1, "l": [un("{{ lookup('pipe', 'id') }}")]})
    );
    let bare = HookTarget {
        application: None,
        ..target()
    };
    let e: Value =
        serde_json::from_str(&ansible_argv(Path::new("a"), Path::new("p"), &Map::new(), &bare)[6])
            .expect("json");
    assert_eq!(e["application"], Value::Null);
}

#[test]
fn ansible_hosts_are_single_names() {
    for ok in ["app-07", "app07.example.com", "10.0.0.7", "db_1"] {
        check_ansible_host(ok).expect(ok);
    }
    for bad in ["", "a,b", "-x", "all:!db", "web*", "a b", ".x", "h\n"] {
        check_ansible_host(bad).expect_err(bad);
    }
}
