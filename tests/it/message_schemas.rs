//! The JSON Schemas under `schemas/` against the code that reads and writes
//! the messages: every `action` example goes through both
//! `schemas/command.action.schema.json` and `queue::message::parse_action`,
//! which must agree (and `batch`, `sync` likewise); every command the code
//! builds through `queue::message`'s wire structs validates against its
//! schema; every kind of event the code builds validates against
//! `schemas/event.schema.json`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use haproxy_control::domain::action::{
    ActionRequest, BatchRequest, BatchTargets, SyncReason, SyncRequest, Target,
};
use haproxy_control::domain::event::{
    Event, EventType, NamedRef, RestoreRef, ServerRef, StatePair, StatusCounts,
};
use haproxy_control::domain::reload::ProcessIdentity;
use haproxy_control::domain::{AdminState, BackendName, OpState, ServerName};
use haproxy_control::queue::message::{
    ActionMessage, BatchMessage, Command, MAX_MESSAGE_BYTES, SCHEDULER_ACTOR, SyncMessage, parse,
    parse_action, parse_batch, parse_sync,
};
use jsonschema::Validator;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::corpus::{fixtures, json_files, read, root, shown};

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

fn schema_document(file: &str) -> Value {
    let path = root().join("schemas").join(file);
    serde_json::from_slice(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", shown(&path)))
}

fn validator(file: &str) -> Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema_document(file))
        .unwrap_or_else(|e| panic!("schemas/{file} does not compile: {e}"))
}

/// `Ok` when `body` is JSON that `schema` accepts, else every reason.
fn schema_verdict(schema: &Validator, body: &[u8]) -> Result<(), String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    value_verdict(schema, &value)
}

fn value_verdict(schema: &Validator, value: &Value) -> Result<(), String> {
    let errors: Vec<String> = schema
        .iter_errors(value)
        .map(|e| format!("{} (at {:?})", e, e.instance_path().as_str()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn parser_verdict(body: &[u8]) -> Result<(), String> {
    parse_action(body).map(|_| ()).map_err(|e| e.0)
}

fn describe(verdict: &Result<(), String>) -> String {
    match verdict {
        Ok(()) => "accepts".to_owned(),
        Err(why) => format!("refuses ({why})"),
    }
}

#[test]
fn every_schema_file_is_json_and_a_draft_2020_12_schema_whose_examples_pass() {
    let dir = root().join("schemas");
    // JSON Schemas only: `*.schema.json` (the OpenAPI documents beside
    // them are checked by their own tests).
    let files: Vec<PathBuf> = json_files(&dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".schema.json"))
        .collect();
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in [
        "command.action.schema.json",
        "command.batch.schema.json",
        "command.sync.schema.json",
        "event.schema.json",
    ] {
        assert!(names.contains(expected), "schemas/{expected} is missing");
    }
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let doc = schema_document(&name);
        assert_eq!(doc["$schema"], DRAFT_2020_12, "{}: $schema", shown(&path));
        for member in ["$id", "title", "description"] {
            assert!(
                doc[member].as_str().is_some_and(|s| !s.is_empty()),
                "{}: {member} is missing",
                shown(&path)
            );
        }
        if let Err(e) = jsonschema::draft202012::meta::validate(&doc) {
            panic!("{} is not a valid draft 2020-12 schema: {e}", shown(&path));
        }
        let schema = validator(&name);
        for (i, example) in doc["examples"].as_array().into_iter().flatten().enumerate() {
            if let Err(why) = value_verdict(&schema, example) {
                panic!(
                    "{}: examples[{i}] fails its own schema: {why}",
                    shown(&path)
                );
            }
        }
    }
}

/// Every example of `kind` in `valid/` is accepted and every one in
/// `invalid/` refused, by the schema and by the worker's parser alike.
fn assert_schema_and_parser_agree(
    kind: &str,
    parser: fn(&[u8]) -> Result<(), String>,
    at_least: (usize, usize),
) {
    let schema = validator(&format!("command.{kind}.schema.json"));
    let mut wrong = Vec::new();
    for (folder, accepted, at_least) in
        [("valid", true, at_least.0), ("invalid", false, at_least.1)]
    {
        let files = json_files(&fixtures(kind, folder));
        assert!(
            files.len() >= at_least,
            "only {} examples in {kind}/{folder}/",
            files.len()
        );
        for path in files {
            let body = read(&path);
            let (by_schema, by_parser) = (schema_verdict(&schema, &body), parser(&body));
            if by_schema.is_ok() != accepted || by_parser.is_ok() != accepted {
                wrong.push(format!(
                    "{}:\n    schema {}\n    parser {}",
                    shown(&path),
                    describe(&by_schema),
                    describe(&by_parser)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} {kind} example(s) where the schema, the parser and the folder do not agree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn every_action_example_gets_the_same_verdict_from_the_schema_and_the_parser() {
    assert_schema_and_parser_agree("action", parser_verdict, (6, 15));
}

#[test]
fn every_batch_and_sync_example_gets_the_same_verdict_from_the_schema_and_the_parser() {
    assert_schema_and_parser_agree(
        "batch",
        |body| parse_batch(body).map(|_| ()).map_err(|e| e.0),
        (3, 15),
    );
    assert_schema_and_parser_agree(
        "sync",
        |body| parse_sync(body).map(|_| ()).map_err(|e| e.0),
        (2, 10),
    );
}

/// What JSON Schema cannot say the same way as the parser, pinned so that a
/// change on either side shows up. `divergent/schema-accepts--*.json` pass
/// the schema and are refused by the parser; `parser-accepts--*.json` the
/// other way round.
#[test]
fn the_known_divergences_between_the_action_schema_and_the_parser_are_exactly_these() {
    let schema = validator("command.action.schema.json");
    let mut cases: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for path in json_files(&fixtures("action", "divergent")) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let schema_accepts = if name.starts_with("schema-accepts--") {
            true
        } else if name.starts_with("parser-accepts--") {
            false
        } else {
            panic!(
                "{}: name must start with schema-accepts-- or parser-accepts--",
                shown(&path)
            );
        };
        cases.push((shown(&path), read(&path), schema_accepts));
    }
    assert!(cases.len() >= 5, "only {} divergent examples", cases.len());

    // The size limit: padding is invisible to JSON, so only the parser sees it.
    let example = read(&fixtures("action", "valid").join("contract-example.json"));
    let padded = |len: usize| {
        let mut body = example.clone();
        body.resize(len, b' ');
        body
    };
    cases.push((
        "(contract example padded to the limit + 1)".to_owned(),
        padded(MAX_MESSAGE_BYTES + 1),
        true,
    ));

    let mut wrong = Vec::new();
    for (name, body, schema_accepts) in &cases {
        let (by_schema, by_parser) = (schema_verdict(&schema, body), parser_verdict(body));
        if by_schema.is_ok() != *schema_accepts || by_parser.is_ok() == *schema_accepts {
            wrong.push(format!(
                "{name}:\n    schema {}\n    parser {}",
                describe(&by_schema),
                describe(&by_parser)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "divergences changed:\n{}",
        wrong.join("\n")
    );

    // The limit itself is inclusive, and both accept a body exactly that long.
    let at_limit = padded(MAX_MESSAGE_BYTES);
    assert_eq!(schema_verdict(&schema, &at_limit), Ok(()));
    assert_eq!(parser_verdict(&at_limit), Ok(()));
}

#[test]
fn batch_and_sync_schemas_say_what_the_contract_says() {
    let batch = validator("command.batch.schema.json");
    let base = json!({
        "transaction_id": "9b2f3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "action": "drain",
        "actor": "ac:deploy-job-77",
        "targets": {"application_group_id": 3},
        "reason": "deploy 1.4.2",
        "force": false,
        "requested_at": "2026-11-28T05:00:00Z"
    });
    let with = |member: &str, value: Value| {
        let mut v = base.clone();
        v[member] = value;
        v
    };
    let without = |member: &str| {
        let mut v = base.clone();
        v.as_object_mut().map(|o| o.remove(member));
        v
    };
    let many: Vec<i64> = (1..=10_000).collect();
    let too_many: Vec<i64> = (1..=10_001).collect();
    let good = [
        base.clone(),
        with("targets", json!({"server_ids": [42]})),
        with("targets", json!({"server_ids": many})),
        with("targets", json!({"application_ids": [5, 6]})),
        without("reason"),
        without("force"),
        without("requested_at"),
    ];
    let bad = [
        without("transaction_id"),
        without("action"),
        without("actor"),
        without("targets"),
        with("transaction_id", json!("not-a-uuid")),
        with("action", json!("sleep")),
        with("actor", json!("")),
        with("actor", json!("user:a\nb")),
        with("targets", json!({})),
        with("targets", json!({"server_ids": []})),
        with("targets", json!({"server_ids": too_many})),
        with("targets", json!({"server_ids": [0]})),
        with("targets", json!({"server_ids": ["42"]})),
        with("targets", json!({"application_ids": [-1]})),
        with("targets", json!({"application_group_id": 0})),
        with("targets", json!({"application_group_id": [3]})),
        with(
            "targets",
            json!({"server_ids": [1], "application_group_id": 3}),
        ),
        with("targets", json!({"server_id": 1})),
        with("target", json!({"server_id": 1})),
        with("requested_at", json!("yesterday")),
        with("force", json!("yes")),
        with("reason", json!("r".repeat(2049))),
    ];
    check("batch", &batch, &good, &bad);

    let sync = validator("command.sync.schema.json");
    let good = [
        json!({"transaction_id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "instance_id": 1, "reason": "force",
               "actor": "user:alice", "requested_at": "2026-11-28T05:00:00Z"}),
        json!({"transaction_id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7"}),
        json!({"transaction_id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "reason": "schedule", "instance_id": null}),
    ];
    let bad = [
        json!({"instance_id": 1, "reason": "force"}),
        json!({"transaction_id": "nope"}),
        json!({"transaction_id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "instance_id": 0}),
        json!({"transaction_id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "instance_id": "lb-1"}),
        json!({"transaction_id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "reason": "manual"}),
        json!({"transaction_id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "actor": " "}),
        json!({"transaction_id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "requested_at": "2026-11-28"}),
        json!({"transaction_id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "instance": 1}),
        json!([]),
    ];
    check("sync", &sync, &good, &bad);
}

/// Every `request` built into its wire struct `C` and serialised (as the
/// publisher does) passes `C`'s schema and reads back as that request.
fn assert_built_commands_match_their_schema<C>(requests: &[C::Request])
where
    C: Command + for<'a> From<&'a C::Request>,
    C::Request: PartialEq + std::fmt::Debug,
{
    let schema = validator(&format!("command.{}.schema.json", C::ROUTING_KEY));
    for request in requests {
        let body = serde_json::to_vec(&C::from(request))
            .unwrap_or_else(|e| panic!("{request:?} does not serialise: {e}"));
        let shown = String::from_utf8_lossy(&body);
        if let Err(why) = schema_verdict(&schema, &body) {
            panic!("{} schema refuses the built {shown}: {why}", C::ROUTING_KEY);
        }
        match parse::<C>(&body) {
            Ok(read) => assert_eq!(&read, request, "{shown} reads back otherwise"),
            Err(e) => panic!("the built {shown} is refused: {e}"),
        }
    }
}

/// What the code publishes: the `action`, `batch` and `sync` commands it
/// builds (API, CLI, batch expansion, sync fan-out, scheduler) agree with
/// the committed schemas.
#[test]
fn every_command_the_code_builds_matches_its_schema_and_reads_back() {
    let tx = Uuid::parse_str("5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11").unwrap_or_default();
    let names = |instance: &str, backend: &str, server: &str| Target::Names {
        instance: instance.to_owned(),
        backend: BackendName::parse(backend).unwrap_or_else(|e| panic!("{e}")),
        server: ServerName::parse(server).unwrap_or_else(|e| panic!("{e}")),
    };
    let by_api = ActionRequest {
        transaction_id: tx,
        action: AdminState::Drain,
        target: Target::ServerId(42),
        actor: "user:alice".to_owned(),
        requested_at: Some(at("2026-11-28T05:00:00.123456Z")),
        reason: Some("deploy \"1.4.2\" — ünïcode\ttab".to_owned()),
        force: false,
        batch_id: None,
    };
    assert_built_commands_match_their_schema::<ActionMessage>(&[
        by_api.clone(),
        ActionRequest {
            action: AdminState::Ready,
            target: names("lb-1", "web", "web1_shop_1"),
            actor: "cli:root".to_owned(),
            requested_at: Some(Utc::now()),
            reason: None,
            force: true,
            ..by_api.clone()
        },
        ActionRequest {
            action: AdminState::Maint,
            requested_at: None,
            batch_id: Some(7),
            ..by_api.clone()
        },
    ]);

    let batch = BatchRequest {
        transaction_id: tx,
        action: AdminState::Drain,
        targets: BatchTargets::ApplicationGroup(3),
        actor: "ac:deploy-job-77".to_owned(),
        requested_at: Some(Utc::now()),
        reason: Some("deploy 1.4.2".to_owned()),
        force: false,
    };
    assert_built_commands_match_their_schema::<BatchMessage>(&[
        batch.clone(),
        BatchRequest {
            targets: BatchTargets::ServerIds((1..=10_000).collect()),
            reason: None,
            force: true,
            ..batch.clone()
        },
        BatchRequest {
            targets: BatchTargets::ApplicationIds(vec![5, 6]),
            requested_at: None,
            ..batch.clone()
        },
    ]);

    let scheduled = SyncRequest {
        transaction_id: tx,
        instance_id: Some(1),
        reason: SyncReason::Schedule,
        actor: SCHEDULER_ACTOR.to_owned(),
        requested_at: Some(Utc::now()),
    };
    assert_built_commands_match_their_schema::<SyncMessage>(&[
        scheduled.clone(),
        SyncRequest {
            reason: SyncReason::Force,
            actor: "user:alice".to_owned(),
            ..scheduled.clone()
        },
        SyncRequest {
            instance_id: None,
            reason: SyncReason::Force,
            actor: "unknown".to_owned(),
            requested_at: None,
            ..scheduled
        },
    ]);
}

fn check(what: &str, schema: &Validator, good: &[Value], bad: &[Value]) {
    for v in good {
        if let Err(why) = value_verdict(schema, v) {
            panic!("{what} schema refuses {v}: {why}");
        }
    }
    for v in bad {
        assert!(
            value_verdict(schema, v).is_err(),
            "{what} schema accepts {v}"
        );
    }
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
}

/// One realistic event of `kind`, as the worker, the sync and the breaker
/// would publish it. The match is exhaustive: a new event type does not
/// compile until it gets an example here.
fn realistic(kind: EventType) -> Event {
    let tx = Uuid::parse_str("5f0c6f4e-1b7e-4a52-9d0e-2f4f2a8f3c11").ok();
    let instance = Some(NamedRef {
        id: 1,
        name: "lb-1".to_owned(),
    });
    let backend = Some(NamedRef {
        id: 7,
        name: "web".to_owned(),
    });
    let server = Some(ServerRef {
        id: 42,
        name: "web1_shop_1".to_owned(),
        address: "10.0.0.11".to_owned(),
        port: Some(8080),
    });
    let state = |admin_state, op_state| {
        Some(StatePair {
            admin_state,
            op_state,
        })
    };
    let when = at("2026-11-28T05:00:01.250Z");
    let fact = format!("{kind:?}|42");
    let action_event = |actor: &str| {
        let mut e = Event::new(kind, &fact, when, actor, tx);
        e.instance = instance.clone();
        e.backend = backend.clone();
        e.server = server.clone();
        e.application_id = Some(5);
        e.action = Some(AdminState::Drain);
        e
    };
    match kind {
        EventType::ActionSucceeded => Event {
            previous: state(AdminState::Ready, OpState::Up),
            current: state(AdminState::Drain, OpState::Up),
            ..action_event("user:alice")
        },
        EventType::ActionFailed => Event {
            error: Some("agent_unreachable".to_owned()),
            error_detail: Some(
                "3 attempts: connect to https://lb-1:9100: connection refused".to_owned(),
            ),
            batch_id: Some(12),
            ..action_event("ac:deploy-job-77")
        },
        EventType::ActionSuperseded => Event {
            error_detail: Some(
                "a command requested at 2026-11-28T05:00:05Z was already applied".to_owned(),
            ),
            ..action_event("user:alice")
        },
        EventType::ActionRejected => Event {
            action: Some(AdminState::Maint),
            previous: state(AdminState::Ready, OpState::Up),
            error_detail: Some("web1_shop_1 is the last ready server of web".to_owned()),
            ..action_event("user:alice")
        },
        EventType::BatchCompleted => {
            let mut e = Event::new(
                kind,
                "batch:12",
                when,
                "ac:deploy-job-77",
                Uuid::parse_str("9b2f3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d").ok(),
            );
            e.action = Some(AdminState::Drain);
            e.batch_id = Some(12);
            let counts: StatusCounts = [
                ("success", 9),
                ("failed", 1),
                ("rejected", 0),
                ("superseded", 0),
            ]
            .into_iter()
            .map(|(status, n)| (status.to_owned(), n))
            .collect();
            e.counts = Some(counts);
            e
        }
        EventType::ServerStateChanged => Event {
            instance: instance.clone(),
            backend: backend.clone(),
            server: server.clone(),
            application_id: Some(5),
            previous: state(AdminState::Ready, OpState::Up),
            current: state(AdminState::Ready, OpState::Down),
            ..Event::new(kind, &fact, when, "system:sync", None)
        },
        EventType::ServerDiscovered => Event {
            instance: instance.clone(),
            backend: backend.clone(),
            server: Some(ServerRef {
                id: 43,
                name: "dyn1".to_owned(),
                address: "10.0.0.12".to_owned(),
                port: None,
            }),
            current: state(AdminState::Maint, OpState::NoCheck),
            ..Event::new(kind, &fact, when, "system:sync", None)
        },
        EventType::ServerRemoved => Event {
            instance: instance.clone(),
            backend: backend.clone(),
            server: server.clone(),
            previous: state(AdminState::Drain, OpState::Stopping),
            ..Event::new(kind, &fact, when, "system:sync", None)
        },
        EventType::InstanceCircuitOpened => Event {
            instance: instance.clone(),
            error: Some("agent_unreachable".to_owned()),
            ..Event::new(
                kind,
                "lb-1|opened|2026-11-28T05:00:01Z",
                when,
                "system:worker",
                tx,
            )
        },
        EventType::InstanceCircuitClosed => Event {
            instance: instance.clone(),
            ..Event::new(
                kind,
                "lb-1|closed|2026-11-28T05:01:01Z",
                when,
                "system:worker",
                None,
            )
        },
        EventType::InstanceSyncFailed => Event {
            instance: instance.clone(),
            error: Some("agent_error".to_owned()),
            error_detail: Some("GET /v1/backends answered 503".to_owned()),
            ..Event::new(
                kind,
                "lb-1|sync|2026-11-28T05:05:00Z",
                when,
                "system:scheduler",
                None,
            )
        },
        EventType::WebhookDisabled => Event {
            webhook_id: Some(4),
            error: Some("the endpoint answered 410 Gone".to_owned()),
            ..Event::new(kind, "4|1764651601250000", when, "haproxy-control", None)
        },
        EventType::RolloutStarted
        | EventType::RolloutCompleted
        | EventType::RolloutAborted
        | EventType::RolloutWaveCompleted
        | EventType::RolloutHalted => {
            let mut e = Event::new(kind, "rollout:3", when, "ac:deploy-job-77", tx);
            e.rollout_id = Some(3);
            if kind == EventType::RolloutWaveCompleted {
                e.wave = Some(0);
            }
            if kind == EventType::RolloutHalted {
                e.server = server.clone();
                e.error = Some("update_failed: the hook exited with 2".to_owned());
                e.exit_code = Some(2);
                e.output_tail = Some("fatal: [web1]: FAILED!".to_owned());
            }
            e
        }
        EventType::RolloutServerDrained
        | EventType::RolloutServerUpdated
        | EventType::RolloutServerReady
        | EventType::RolloutServerFailed => {
            let mut e = Event::new(kind, &fact, when, "ac:deploy-job-77", tx);
            e.rollout_id = Some(3);
            e.instance = instance.clone();
            e.backend = backend.clone();
            e.server = server.clone();
            if kind == EventType::RolloutServerFailed {
                e.error = Some("health_timeout: the check did not stay up".to_owned());
            }
            e
        }
        EventType::ApprovalRequested
        | EventType::ApprovalApproved
        | EventType::ApprovalRejected
        | EventType::ApprovalExpired => {
            let decided = kind != EventType::ApprovalRequested;
            let by_person = matches!(
                kind,
                EventType::ApprovalApproved | EventType::ApprovalRejected
            );
            let status = match kind {
                EventType::ApprovalRequested => "pending",
                EventType::ApprovalApproved => "approved",
                EventType::ApprovalRejected => "rejected",
                _ => "expired",
            };
            Event {
                approval: Some(haproxy_control::domain::event::ApprovalRef {
                    id: 4,
                    kind: "action".to_owned(),
                    status: status.to_owned(),
                    requester: "user:olga".to_owned(),
                    summary: serde_json::json!({"action": "maint", "server_id": 42, "force": true}),
                    matched_rules: serde_json::json!([
                        {"rule": "force_actions", "detail": "force: true (skips the last-ready-server guard)"}
                    ]),
                    requested_at: when,
                    expires_at: at("2026-11-28T06:00:01.250Z"),
                    decided_by: by_person.then(|| "user:petra".to_owned()),
                    decided_at: decided.then_some(when),
                    comment: by_person.then(|| "ok, change 4711".to_owned()),
                }),
                ..Event::new(kind, "approval:4", when, "user:olga", tx)
            }
        }
        EventType::InstanceReloaded => {
            let process = |pid, started: &str| ProcessIdentity {
                pid,
                started_at: Some(at(started)),
            };
            Event {
                instance: instance.clone(),
                previous_haproxy_process: Some(process(19640, "2026-11-28T04:00:00Z")),
                haproxy_process: Some(process(20112, "2026-11-28T05:00:00Z")),
                restored: Some(vec![RestoreRef {
                    server_id: 42,
                    action: AdminState::Drain,
                    transaction_id: Uuid::nil(),
                }]),
                ..Event::new(kind, "lb-1|20112", when, "haproxy:lb-1", None)
            }
        }
    }
}

#[test]
fn every_event_type_the_code_builds_matches_the_event_schema() {
    let schema = validator("event.schema.json");
    let doc = schema_document("event.schema.json");

    let strings = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let in_schema = strings(&doc["properties"]["type"]["enum"]);
    let in_code: BTreeSet<String> = EventType::ALL
        .iter()
        .map(|k| k.routing_key().to_owned())
        .collect();
    assert_eq!(
        in_schema, in_code,
        "event types in the schema and in EventType::ALL"
    );
    let admin: BTreeSet<String> = AdminState::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(strings(&doc["$defs"]["admin_state"]["enum"]), admin);
    let op: BTreeSet<String> = [
        OpState::Up,
        OpState::Down,
        OpState::NoCheck,
        OpState::Stopping,
        OpState::Starting,
    ]
    .iter()
    .map(|s| s.as_str().to_owned())
    .collect();
    assert_eq!(strings(&doc["$defs"]["op_state"]["enum"]), op);

    for kind in EventType::ALL {
        let event = realistic(kind);
        let value = serde_json::to_value(&event).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(value["type"], kind.routing_key());
        if let Err(why) = value_verdict(&schema, &value) {
            panic!(
                "{} does not match schemas/event.schema.json: {why}\n{value:#}",
                kind.routing_key()
            );
        }
        let back: Event = serde_json::from_value(value).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(back, event);
    }

    // The per-type rules are live: the same events, stripped of what their
    // type requires, are refused.
    let refused = |kind: EventType, strip: fn(&mut Event)| {
        let mut event = realistic(kind);
        strip(&mut event);
        let value = serde_json::to_value(&event).unwrap_or_default();
        assert!(
            value_verdict(&schema, &value).is_err(),
            "schema accepts {value:#}"
        );
    };
    refused(EventType::ActionSucceeded, |e| e.transaction_id = None);
    refused(EventType::ActionSucceeded, |e| e.current = None);
    refused(EventType::ActionRejected, |e| e.server = None);
    refused(EventType::ActionFailed, |e| {
        e.error = Some("timeout".to_owned())
    });
    refused(EventType::ActionFailed, |e| e.error = None);
    refused(EventType::BatchCompleted, |e| e.counts = None);
    refused(EventType::ServerStateChanged, |e| e.previous = None);
    refused(EventType::ServerRemoved, |e| e.server = None);
    refused(EventType::InstanceCircuitClosed, |e| e.instance = None);
}

#[test]
fn event_examples_pass_or_fail_the_event_schema_as_their_folder_says() {
    let schema = validator("event.schema.json");
    let mut wrong = Vec::new();
    for (folder, accepted) in [("valid", true), ("invalid", false)] {
        let files = json_files(&fixtures("event", folder));
        assert!(
            files.len() >= 4,
            "only {} examples in event/{folder}/",
            files.len()
        );
        for path in files {
            let body = read(&path);
            let verdict = schema_verdict(&schema, &body);
            if verdict.is_ok() != accepted {
                wrong.push(format!(
                    "{}: in {folder}/, schema {}",
                    shown(&path),
                    describe(&verdict)
                ));
            }
            if accepted {
                // A valid example is exactly what `Event` writes.
                let parsed = serde_json::from_slice::<Value>(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        serde_json::from_value::<Event>(v.clone())
                            .map(|e| (v, e))
                            .map_err(|e| e.to_string())
                    })
                    .and_then(|(v, e)| {
                        serde_json::to_value(&e)
                            .map(|again| (v, again))
                            .map_err(|e| e.to_string())
                    });
                match parsed {
                    Ok((v, again)) if v == again => {}
                    Ok((_, again)) => {
                        wrong.push(format!("{}: Event writes it back as {again}", shown(&path)))
                    }
                    Err(e) => wrong.push(format!("{}: not an Event: {e}", shown(&path))),
                }
            }
        }
    }
    assert!(wrong.is_empty(), "event examples:\n{}", wrong.join("\n"));
}
