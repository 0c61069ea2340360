//! The HTTP API on a real listening socket, against the real stack:
//! PostgreSQL, RabbitMQ, workers, real HAProxy processes and agents.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::api::{
    ADMIN, Api, FAGENT_SECRET, OPERATOR, VIEWER, assert_error, seed_inventory,
};
use crate::harness::proxy::Mode;
use crate::harness::{HttpBackends, TcpProxy, TestAgent, TestHaproxy, TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(20);

fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_i64())
        .collect()
}

/// Reads every page of a listing; returns the ids in order and the number of pages.
async fn all_pages(api: &Api, path: &str, limit: usize) -> (Vec<i64>, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let page = api.ok(&url).await;
        pages += 1;
        let got = ids(&page);
        assert!(got.len() <= limit, "{page}");
        out.extend(got);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 100, "endless pagination");
    }
    (out, pages)
}

#[tokio::test]
async fn full_flow_settings_sync_list_drain_poll_history_ready() {
    let apps = HttpBackends::start(&["a", "b", "c"]).await;
    let haproxy = TestHaproxy::start(&format!(
        "backend web\n  server web1_shop_1 {}\n  server web2_shop_1 {}\n  server web3_shop_1 {}\n",
        apps.addr("a"),
        apps.addr("b"),
        apps.addr("c")
    ))
    .await;
    let agent = TestAgent::start(&haproxy.socket).await;
    let mut sys = TestSystem::start().await;
    sys.start_worker(sys.config());
    let api = Api::start(&sys).await;
    sys.exec("INSERT INTO servers (id, hostname, ip) VALUES (501, 'lbnode', '127.0.0.1')")
        .await;

    // Settings: an AC server becomes an HAProxy node (admin only).
    let settings = json!({
        "is_haproxy_node": true, "name": "lb-1",
        "fagent_url": agent.url, "fagent_token": agent.token,
    });
    assert_error(
        &api.put("/api/servers/501/haproxy", OPERATOR, &settings)
            .await,
        403,
        "forbidden",
    );
    let (status, saved) = api.put("/api/servers/501/haproxy", ADMIN, &settings).await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["is_haproxy_node"], true);
    assert_eq!(saved["instance"]["name"], "lb-1");
    assert_eq!(saved["instance"]["server_id"], 501);
    assert!(!saved.to_string().contains(&agent.token), "{saved}");
    let instance_id = saved["instance"]["id"].as_i64().expect("instance id");
    assert!(sys.is_haproxy_node(501).await);
    assert_eq!(
        sys.instance(instance_id).await.fagent_token_ref,
        format!("token:{}", agent.token),
        "the token is stored as a token: reference"
    );
    let (status, again) = api.put("/api/servers/501/haproxy", ADMIN, &settings).await;
    assert_eq!(
        (status, &again["instance"]["id"]),
        (200, &json!(instance_id))
    );

    // Sync it through the API.
    let (status, sync) = api
        .send(
            Method::POST,
            &format!("/api/haproxy/instances/{instance_id}/sync"),
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(status, 202, "{sync}");
    let txn = Uuid::parse_str(sync["transaction_id"].as_str().expect("txn")).expect("uuid");
    let (result, counts) = sys.wait_sync(txn, WAIT).await;
    assert_eq!(result, "success", "{counts}");

    let instances = api.ok("/api/haproxy/instances").await;
    let lb = &instances["items"][0];
    assert_eq!(lb["name"], "lb-1", "{instances}");
    assert_eq!(lb["breaker"]["state"], "closed");
    assert_eq!(lb["last_sync"]["result"], "success");
    assert!(lb["last_sync"]["at"].is_string());
    assert!(instances["next_cursor"].is_null());

    let backends = api
        .ok(&format!("/api/haproxy/instances/{instance_id}/backends"))
        .await;
    let web = &backends["items"][0];
    assert_eq!(web["name"], "web", "{backends}");
    assert_eq!(web["servers"]["total"], 3);
    assert_eq!(web["servers"]["ready"], 3);
    let backend_id = web["id"].as_i64().expect("backend id");

    let servers = api
        .ok(&format!("/api/haproxy/backends/{backend_id}/servers"))
        .await;
    let items = servers["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{servers}");
    let web2 = items
        .iter()
        .find(|s| s["name"] == "web2_shop_1")
        .expect("web2 listed");
    assert_eq!(web2["admin_state"], "ready");
    assert_eq!(web2["address"], "127.0.0.1");
    assert_eq!(web2["port"], apps.addr("b").port());
    assert!(web2["application"].is_null());
    let server_id = web2["id"].as_i64().expect("server id");

    // Drain it through the API and poll the action.
    let action_path = format!("/api/haproxy/servers/{server_id}/action");
    let (status, accepted) = api
        .post(
            &action_path,
            OPERATOR,
            &json!({"action": "drain", "reason": "deploy 1.4.2"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let drain_txn = accepted["transaction_id"].as_str().expect("txn").to_owned();
    assert!(matches!(
        accepted["status"].as_str(),
        Some("pending" | "running" | "success")
    ));
    let action = api.wait_action(&drain_txn).await;
    assert_eq!(action["status"], "success", "{action}");
    assert_eq!(action["attempts"], 1);
    assert_eq!(action["actor"], "user:olga");
    assert_eq!(action["server_id"], server_id);
    assert_eq!(action["reason"], "deploy 1.4.2");
    assert!(action["finished_at"].is_string());
    assert_eq!(
        agent.server("web", "web2_shop_1").await["admin_state"],
        "drain"
    );

    // The same transaction again: the same answer, nothing applied twice.
    let (status, repeat) = api
        .post(
            &action_path,
            OPERATOR,
            &json!({"action": "drain", "reason": "deploy 1.4.2", "transaction_id": drain_txn}),
        )
        .await;
    assert_eq!((status, &repeat["status"]), (202, &json!("success")));
    assert_eq!(repeat["transaction_id"], json!(drain_txn));

    let history = api
        .ok(&format!("/api/haproxy/servers/{server_id}/history"))
        .await;
    let newest = &history["items"][0];
    assert_eq!(newest["source"], "action", "{history}");
    assert_eq!(newest["actor"], "user:olga");
    assert_eq!(newest["previous"]["admin_state"], "ready");
    assert_eq!(newest["current"]["admin_state"], "drain");
    assert_eq!(newest["transaction_id"], json!(drain_txn));

    let drained = api
        .ok(&format!(
            "/api/haproxy/backends/{backend_id}/servers?admin_state=drain"
        ))
        .await;
    assert_eq!(ids(&drained), vec![server_id]);

    // Ready again.
    let (status, accepted) = api
        .post(&action_path, OPERATOR, &json!({"action": "ready"}))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let ready = api
        .wait_action(accepted["transaction_id"].as_str().expect("txn"))
        .await;
    assert_eq!(ready["status"], "success", "{ready}");
    assert_eq!(
        agent.server("web", "web2_shop_1").await["admin_state"],
        "ready"
    );
    let history = api
        .ok(&format!("/api/haproxy/servers/{server_id}/history"))
        .await;
    let states: Vec<&Value> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|h| &h["current"]["admin_state"])
        .collect();
    assert_eq!(states, vec!["ready", "drain"], "newest first: {history}");
    let on_web2 = sys
        .actions()
        .await
        .into_iter()
        .filter(|a| a.server_id == Some(server_id))
        .count();
    assert_eq!(on_web2, 2);

    let (status, ready) = api.send(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (status, &ready["status"]),
        (200, &json!("ready")),
        "{ready}"
    );
    api.assert_never_shown(&agent.token);
    api.stop().await;
}

#[tokio::test]
async fn every_bad_request_is_a_json_4xx_and_roles_are_enforced() {
    let sys = TestSystem::start().await;
    seed_inventory(&sys).await;
    sys.exec("INSERT INTO servers (id, hostname) VALUES (502, 'other'), (503, 'third')")
        .await;
    let api = Api::start(&sys).await;
    let action = "/api/haproxy/servers/90001/action";
    let drain = json!({"action": "drain"});

    // 401: no token, a wrong one, another scheme.
    assert_error(
        &api.send(Method::GET, "/api/haproxy/instances", None, None)
            .await,
        401,
        "unauthorized",
    );
    assert_error(
        &api.get("/api/haproxy/instances", "not-a-token-at-all")
            .await,
        401,
        "unauthorized",
    );
    let basic = api
        .http
        .get(format!("{}/api/haproxy/instances", api.url))
        .header("authorization", format!("Basic {OPERATOR}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(basic.status(), 401);
    assert_error(
        &api.send(Method::POST, action, None, Some(&drain)).await,
        401,
        "unauthorized",
    );

    // 403: a viewer reads but cannot act; an operator cannot change settings.
    assert_eq!(api.get("/api/haproxy/instances", VIEWER).await.0, 200);
    assert_error(&api.post(action, VIEWER, &drain).await, 403, "forbidden");
    assert_error(
        &api.post(
            "/api/haproxy/batch/action",
            VIEWER,
            &json!({"action": "drain", "targets": {"server_ids": [90001]}}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(
        &api.send(
            Method::POST,
            "/api/haproxy/instances/901/sync",
            Some(VIEWER),
            None,
        )
        .await,
        403,
        "forbidden",
    );
    let settings = json!({"is_haproxy_node": true, "name": "lb-x", "fagent_url": "http://127.0.0.1:9", "fagent_token": "t0k3n-value"});
    assert_error(
        &api.put("/api/servers/502/haproxy", OPERATOR, &settings)
            .await,
        403,
        "forbidden",
    );
    assert_eq!(sys.actions().await.len(), 0, "nothing recorded");

    // 404: unknown ids and routes.
    let unknown = Uuid::new_v4();
    for path in [
        "/api/haproxy/instances/424242/backends".to_owned(),
        "/api/haproxy/backends/424242/servers".to_owned(),
        "/api/haproxy/servers/424242/history".to_owned(),
        format!("/api/haproxy/actions/{unknown}"),
        "/api/haproxy/batches/424242".to_owned(),
        "/api/nothing-here".to_owned(),
        "/nothing".to_owned(),
    ] {
        assert_error(&api.get(&path, VIEWER).await, 404, "not_found");
    }
    assert_error(
        &api.post("/api/haproxy/servers/424242/action", OPERATOR, &drain)
            .await,
        404,
        "not_found",
    );
    assert_error(
        &api.send(
            Method::POST,
            "/api/haproxy/instances/424242/sync",
            Some(OPERATOR),
            None,
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &api.put("/api/servers/424242/haproxy", ADMIN, &settings)
            .await,
        404,
        "not_found",
    );

    // 405: a known path with another method.
    assert_error(
        &api.send(Method::DELETE, "/api/haproxy/instances", Some(VIEWER), None)
            .await,
        405,
        "method_not_allowed",
    );

    // 400: malformed JSON, bad path values, bad cursors, unknown query parameters.
    let ct = Some("application/json");
    for body in [
        "{\"action\": ",
        "not json",
        "",
        "{\"action\": \"drain\"} trailing",
    ] {
        assert_error(
            &api.send_raw(Method::POST, action, OPERATOR, ct, body).await,
            400,
            "malformed_json",
        );
    }
    assert_error(
        &api.send_raw(
            Method::POST,
            action,
            OPERATOR,
            None,
            "{\"action\": \"drain\"}",
        )
        .await,
        415,
        "unsupported_media_type",
    );
    let huge = format!(
        "{{\"action\": \"drain\", \"reason\": \"{}\"}}",
        "r".repeat(2 << 20)
    );
    assert_error(
        &api.send_raw(Method::POST, action, OPERATOR, ct, &huge)
            .await,
        413,
        "body_too_large",
    );
    assert_error(
        &api.post("/api/haproxy/servers/abc/action", OPERATOR, &drain)
            .await,
        400,
        "invalid_path",
    );
    assert_error(
        &api.get("/api/haproxy/actions/not-a-uuid", VIEWER).await,
        400,
        "invalid_path",
    );
    assert_error(
        &api.get("/api/haproxy/backends/9001/servers?cursor=zz", VIEWER)
            .await,
        400,
        "invalid_cursor",
    );
    assert_error(
        &api.get("/api/haproxy/instances?cursor=deadbeef", VIEWER)
            .await,
        400,
        "invalid_cursor",
    );
    assert_error(
        &api.get(
            "/api/haproxy/backends/9001/servers?admin_sate=drain",
            VIEWER,
        )
        .await,
        400,
        "invalid_query",
    );

    // 422: invalid action, fields, targets, limits and filters.
    for (body, code) in [
        (json!({"action": "sleep"}), "invalid_action"),
        (json!({"action": "DRAIN"}), "invalid_action"),
        (
            json!({"action": "drain", "transaction_id": "x"}),
            "invalid_transaction_id",
        ),
        (
            json!({"action": "drain", "reason": "r".repeat(3000)}),
            "invalid_reason",
        ),
        (
            json!({"action": "drain", "reason": "a\u{0}b"}),
            "invalid_reason",
        ),
        (json!({"action": "drain", "force": "yes"}), "invalid_body"),
        (json!({"action": 5}), "invalid_body"),
        (json!({"state": "drain"}), "invalid_body"),
        (json!({"action": "drain", "extra": 1}), "invalid_body"),
        (json!([]), "invalid_body"),
    ] {
        assert_error(&api.post(action, OPERATOR, &body).await, 422, code);
    }
    for targets in [
        json!({}),
        json!({"server_ids": []}),
        json!({"server_ids": [0]}),
        json!({"server_ids": [1], "application_group_id": 2}),
        json!({"application_group_id": -3}),
        json!({"servers": [1]}),
        json!("all"),
    ] {
        assert_error(
            &api.post(
                "/api/haproxy/batch/action",
                OPERATOR,
                &json!({"action": "drain", "targets": targets}),
            )
            .await,
            422,
            "invalid_targets",
        );
    }
    assert_error(
        &api.post(
            "/api/haproxy/batch/action",
            OPERATOR,
            &json!({"action": "drain", "targets": {"server_ids": [424242]}}),
        )
        .await,
        422,
        "no_servers",
    );
    for q in ["limit=0", "limit=501", "limit=abc", "limit=-5"] {
        assert_error(
            &api.get(&format!("/api/haproxy/instances?{q}"), VIEWER)
                .await,
            422,
            "invalid_limit",
        );
    }
    for q in [
        "admin_state=up",
        "op_state=sleeping",
        "application_id=x",
        "linked=maybe",
    ] {
        assert_error(
            &api.get(&format!("/api/haproxy/backends/9001/servers?{q}"), VIEWER)
                .await,
            422,
            "invalid_filter",
        );
    }
    assert_error(
        &api.get("/api/haproxy/servers/90001/history?since=yesterday", VIEWER)
            .await,
        422,
        "invalid_filter",
    );
    for (body, code) in [
        (
            json!({"is_haproxy_node": true, "name": "bad name;", "fagent_url": "http://x", "fagent_token": "t0k3n"}),
            "invalid_name",
        ),
        (
            json!({"is_haproxy_node": true, "name": "lb-x", "fagent_url": "ftp://x", "fagent_token": "t0k3n"}),
            "invalid_field",
        ),
        (
            json!({"is_haproxy_node": true, "name": "lb-x", "fagent_url": "http://x", "fagent_token": "has space"}),
            "invalid_field",
        ),
        (
            json!({"is_haproxy_node": true, "fagent_url": "http://x", "fagent_token": "t0k3n"}),
            "missing_field",
        ),
        (
            json!({"is_haproxy_node": true, "name": "lb-x", "fagent_url": "http://x"}),
            "missing_field",
        ),
        (json!({"name": "lb-x"}), "invalid_body"),
    ] {
        assert_error(
            &api.put("/api/servers/502/haproxy", ADMIN, &body).await,
            422,
            code,
        );
    }

    // 409: a transaction id reused with another body.
    let txn = Uuid::new_v4().to_string();
    let first = json!({"action": "drain", "transaction_id": txn, "reason": "r1"});
    let (status, accepted) = api.post(action, OPERATOR, &first).await;
    assert_eq!(
        (status, &accepted["status"]),
        (202, &json!("pending")),
        "{accepted}"
    );
    assert_eq!(accepted["transaction_id"], json!(txn));
    assert_eq!(
        sys.depth(&sys.topology.actions_queue).await,
        1,
        "command published"
    );
    for other in [
        json!({"action": "maint", "transaction_id": txn, "reason": "r1"}),
        json!({"action": "drain", "transaction_id": txn, "reason": "r2"}),
        json!({"action": "drain", "transaction_id": txn, "reason": "r1", "force": true}),
    ] {
        assert_error(
            &api.post(action, OPERATOR, &other).await,
            409,
            "transaction_conflict",
        );
    }
    assert_error(
        &api.post("/api/haproxy/servers/90002/action", OPERATOR, &first)
            .await,
        409,
        "transaction_conflict",
    );
    // The same body again: the same answer, and the pending command is published again.
    let (status, repeat) = api.post(action, OPERATOR, &first).await;
    assert_eq!((status, &repeat), (202, &accepted));
    assert_eq!(
        sys.depth(&sys.topology.actions_queue).await,
        2,
        "re-published while pending"
    );
    let row = sys
        .action(Uuid::parse_str(&txn).expect("uuid"))
        .await
        .expect("the action's row");
    assert_eq!(
        (row.actor.as_str(), row.status.as_str(), row.server_id),
        ("user:olga", "pending", Some(90001))
    );
    let (status, view) = api
        .get(&format!("/api/haproxy/actions/{txn}"), VIEWER)
        .await;
    assert_eq!(
        (status, &view["status"], &view["actor"]),
        (200, &json!("pending"), &json!("user:olga"))
    );

    // Five identical requests at once: one action.
    let txn = Uuid::new_v4().to_string();
    let body = json!({"action": "maint", "transaction_id": txn});
    let answers = futures::future::join_all(
        (0..5).map(|_| api.post("/api/haproxy/servers/90003/action", OPERATOR, &body)),
    )
    .await;
    for (status, answer) in &answers {
        assert_eq!(*status, 202, "{answer}");
        assert_eq!(answer["transaction_id"], json!(txn));
    }
    assert!(
        sys.action(Uuid::parse_str(&txn).expect("uuid"))
            .await
            .is_some(),
        "one row (the transaction id is unique)"
    );

    // A batch: same transaction and body → same answer; another body → 409.
    let btxn = Uuid::new_v4().to_string();
    let batch = json!({"action": "drain", "targets": {"server_ids": [90004, 90005]}, "transaction_id": btxn});
    let (status, first_batch) = api
        .post("/api/haproxy/batch/action", OPERATOR, &batch)
        .await;
    assert_eq!(status, 202, "{first_batch}");
    assert_eq!(first_batch["total"], 2);
    assert_eq!(first_batch["transaction_id"], json!(btxn));
    let (status, second) = api
        .post("/api/haproxy/batch/action", OPERATOR, &batch)
        .await;
    assert_eq!((status, &second), (202, &first_batch));
    assert_error(
        &api.post(
            "/api/haproxy/batch/action",
            OPERATOR,
            &json!({"action": "maint", "targets": {"server_ids": [90004, 90005]}, "transaction_id": btxn}),
        )
        .await,
        409,
        "transaction_conflict",
    );
    assert_error(
        &api.post(
            "/api/haproxy/batch/action",
            OPERATOR,
            &json!({"action": "drain", "targets": {"server_ids": [90004]}, "transaction_id": btxn}),
        )
        .await,
        409,
        "transaction_conflict",
    );
    let batch_id = first_batch["batch_id"].as_i64().expect("batch id");
    let view = api.ok(&format!("/api/haproxy/batches/{batch_id}")).await;
    assert_eq!(view["total"], 2, "{view}");
    assert_eq!(view["actor"], "user:olga");
    assert_eq!(view["targets"], json!({"server_ids": [90004, 90005]}));
    assert!(view["counts"]["pending"].as_i64().is_some(), "{view}");

    // Settings: a name another server's instance has is a 409.
    let (status, _) = api.put("/api/servers/502/haproxy", ADMIN, &settings).await;
    assert_eq!(status, 201);
    assert_error(
        &api.put("/api/servers/503/haproxy", ADMIN, &settings).await,
        409,
        "name_taken",
    );

    // A sync of an inactive instance is refused; of an active one published.
    sys.exec("UPDATE haproxy_instances SET is_active = false WHERE id = 901")
        .await;
    assert_error(
        &api.send(
            Method::POST,
            "/api/haproxy/instances/901/sync",
            Some(OPERATOR),
            None,
        )
        .await,
        422,
        "instance_inactive",
    );

    assert_error(
        &api.post("/api/haproxy/servers/90006/action", OPERATOR, &drain)
            .await,
        422,
        "instance_inactive",
    );
    api.ok("/api/haproxy/instances").await;
    api.ok("/api/haproxy/instances/901/backends").await;
    api.assert_never_shown(FAGENT_SECRET);
    api.assert_never_shown("t0k3n-value");
    api.stop().await;
}

#[tokio::test]
async fn listings_page_through_every_item_once_with_filters() {
    let sys = TestSystem::start().await;
    seed_inventory(&sys).await;
    sys.exec(
        "INSERT INTO haproxy_instances (id, name, fagent_url, fagent_token_ref) \
           VALUES (902, 'lb-two', 'http://u:pw@127.0.0.1:9', 'env:LB_TWO'); \
         INSERT INTO haproxy_backends (haproxy_id, backend_name) VALUES (901, 'api'), (901, 'db'), (901, 'zz'); \
         INSERT INTO haproxy_backends (haproxy_id, backend_name, removed_at) VALUES (901, 'gone', now()); \
         INSERT INTO servers (id, hostname, ip) VALUES (601, 'hosta', '10.0.0.1'); \
         INSERT INTO applications (id, name, server_id) VALUES (77, 'shop', 601); \
         UPDATE haproxy_servers SET application_id = 77 WHERE id = 90001; \
         UPDATE haproxy_servers SET admin_state = 'drain' WHERE id IN (90002, 90003); \
         UPDATE haproxy_servers SET op_state = 'down' WHERE id = 90007; \
         INSERT INTO haproxy_servers (backend_id, server_name, address, admin_state, op_state, removed_at) \
           VALUES (9001, 'removed', '127.0.0.1', 'ready', 'up', now()); \
         INSERT INTO haproxy_server_status_history (server_id, previous_admin_state, new_admin_state, \
             previous_op_state, new_op_state, source, actor, changed_at) \
           SELECT 90001, 'ready', 'drain', 'up', 'up', 'sync', 'haproxy:lb-sql', \
                  timestamptz '2026-11-28 05:00:00+00' + g * interval '1 minute' \
           FROM generate_series(1, 7) g; \
         INSERT INTO haproxy_server_status_history (server_id, new_admin_state, new_op_state, source, actor, changed_at) \
           VALUES (90001, 'ready', 'up', 'sync', 'haproxy:lb-sql', timestamptz '2026-11-28 05:04:00+00');",
    )
    .await;
    let api = Api::start(&sys).await;

    // Seven servers, three per page: three pages, each server once, in order.
    let (all, pages) = all_pages(&api, "/api/haproxy/backends/9001/servers", 3).await;
    assert_eq!(pages, 3);
    assert_eq!(
        all,
        (90001..=90007).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    let (all, pages) = all_pages(&api, "/api/haproxy/backends/9001/servers", 7).await;
    assert_eq!((all.len(), pages), (7, 1));
    let first = api.ok("/api/haproxy/backends/9001/servers").await;
    assert_eq!(ids(&first).len(), 7, "default limit 50");
    assert!(first["next_cursor"].is_null());
    let s1 = &first["items"][0];
    assert_eq!(s1["application"], json!({"id": 77, "name": "shop"}), "{s1}");
    assert_eq!(s1["port"], 8001);

    // Filters.
    for (q, expected) in [
        ("admin_state=drain", vec![90002, 90003]),
        ("op_state=down", vec![90007]),
        ("application_id=77", vec![90001]),
        ("linked=false", (90002..=90007).collect()),
        ("linked=true", vec![90001]),
        (
            "admin_state=ready&op_state=up&linked=false",
            vec![90004, 90005, 90006],
        ),
        ("admin_state=maint", vec![]),
    ] {
        let page = api
            .ok(&format!("/api/haproxy/backends/9001/servers?{q}"))
            .await;
        assert_eq!(ids(&page), expected, "{q}");
    }
    let (filtered, pages) =
        all_pages(&api, "/api/haproxy/backends/9001/servers?linked=false", 4).await;
    assert_eq!((filtered, pages), ((90002..=90007).collect(), 2));

    // Backends of an instance, by name, live only, with counts.
    let backends = api.ok("/api/haproxy/instances/901/backends?limit=3").await;
    let names: Vec<&str> = backends["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(names, vec!["api", "db", "web"], "{backends}");
    let web = &backends["items"][2];
    assert_eq!(
        web["servers"],
        json!({"total": 7, "ready": 5, "drain": 2, "maint": 0, "up": 6, "down": 1})
    );
    let cursor = backends["next_cursor"].as_str().expect("a second page");
    let rest = api
        .ok(&format!(
            "/api/haproxy/instances/901/backends?limit=3&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["items"][0]["name"], "zz");
    assert!(rest["next_cursor"].is_null());
    // A cursor of one listing is refused by another.
    assert_error(
        &api.get(&format!("/api/haproxy/instances?cursor={cursor}"), VIEWER)
            .await,
        400,
        "invalid_cursor",
    );

    // Instances, one per page.
    let (instances, pages) = all_pages(&api, "/api/haproxy/instances", 1).await;
    assert_eq!((instances, pages), (vec![901, 902], 2));
    let two = api.ok("/api/haproxy/instances?limit=1&cursor=").await;
    assert!(two.get("items").is_some());
    let lb_two = api.ok("/api/haproxy/instances").await["items"][1].clone();
    assert_eq!(
        lb_two["fagent_url"], "http://127.0.0.1:9",
        "credentials removed: {lb_two}"
    );
    assert!(
        !lb_two.to_string().contains("LB_TWO"),
        "no token reference: {lb_two}"
    );

    // History: newest first, in pages, with a time range.
    let (history, pages) = all_pages(&api, "/api/haproxy/servers/90001/history", 3).await;
    assert_eq!(pages, 3);
    assert_eq!(history.len(), 8);
    let mut unique = history.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 8, "no duplicates");
    let page = api.ok("/api/haproxy/servers/90001/history?limit=8").await;
    let times: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|h| h["changed_at"].as_str())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    // Two rows share 05:04; the id breaks the tie across pages.
    let ranged = api
        .ok("/api/haproxy/servers/90001/history?since=2026-11-28T05:03:00Z&until=2026-11-28T05:05:00Z")
        .await;
    assert_eq!(ids(&ranged).len(), 4, "{ranged}");
    let (tied, _) = all_pages(
        &api,
        "/api/haproxy/servers/90001/history?since=2026-11-28T05:03:00Z&until=2026-11-28T05:05:00Z",
        1,
    )
    .await;
    assert_eq!(tied, ids(&ranged));
    assert_eq!(page["items"][7]["actor"], "haproxy:lb-sql");
    assert!(page["items"][0]["transaction_id"].is_null());
    assert_eq!(
        api.ok("/api/haproxy/servers/90002/history").await["items"],
        json!([])
    );
    api.assert_never_shown(FAGENT_SECRET);
    api.stop().await;
}

/// Five servers of an ApplicationGroup, linked by the name template, in
/// three backends of two HAProxy instances (each backend keeps a ready
/// server outside the group, so the guard allows every action).
#[tokio::test]
async fn a_batch_over_an_application_group_on_two_instances_acts_once_per_server() {
    let apps = HttpBackends::start(&["a"]).await;
    let addr = apps.addr("a");
    let lb1 = TestHaproxy::start(&format!(
        "backend web\n  server hosta_shop_1 {addr}\n  server hostb_shop_1 {addr}\n  server hosta_other_1 {addr}\n\
         backend cart\n  server hosta_cart_1 {addr}\n  server spare1 {addr}\n"
    ))
    .await;
    let lb2 = TestHaproxy::start(&format!(
        "backend web\n  server hosta_shop_1 {addr}\n  server hostb_shop_1 {addr}\n  server spare2 {addr}\n"
    ))
    .await;
    let (agent1, agent2) = (
        TestAgent::start(&lb1.socket).await,
        TestAgent::start(&lb2.socket).await,
    );
    let mut sys = TestSystem::start().await;
    sys.exec(
        "INSERT INTO servers (id, hostname, ip) VALUES (601, 'hosta', '10.9.0.1'), (602, 'hostb', '10.9.0.2'); \
         INSERT INTO applications (id, name, server_id, port, instance) VALUES \
           (701, 'shop', 601, NULL, '1'), (702, 'shop', 602, NULL, '1'), \
           (703, 'cart', 601, NULL, '1'), (704, 'other', 601, NULL, '1'); \
         INSERT INTO application_groups (id, name) VALUES (801, 'shop-group'); \
         INSERT INTO application_group_members (group_id, application_id) VALUES (801, 701), (801, 702), (801, 703);",
    )
    .await;
    sys.register_agent("lb-1", &agent1).await;
    sys.register_agent("lb-2", &agent2).await;
    let in_group = sys
        .servers()
        .await
        .into_iter()
        .filter(|s| matches!(s.application_id, Some(701..=703)))
        .count();
    assert_eq!(in_group, 5, "linked by the name template");
    sys.start_worker(sys.config());
    let api = Api::start(&sys).await;

    let txn = Uuid::new_v4().to_string();
    let batch = json!({
        "action": "drain", "targets": {"application_group_id": 801},
        "transaction_id": txn, "reason": "deploy shop 2.0",
    });
    let (status, first) = api
        .post("/api/haproxy/batch/action", OPERATOR, &batch)
        .await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["total"], 5);
    let (status, second) = api
        .post("/api/haproxy/batch/action", OPERATOR, &batch)
        .await;
    assert_eq!((status, &second), (202, &first), "the same answer");
    let batch_id = first["batch_id"].as_i64().expect("batch id");

    let done = eventually(WAIT, "the batch to complete", || async {
        let view = api.ok(&format!("/api/haproxy/batches/{batch_id}")).await;
        view["completed_at"].is_string().then_some(view)
    })
    .await;
    assert_eq!(done["total"], 5, "{done}");
    assert_eq!(done["counts"]["success"], 5, "{done}");
    assert_eq!(done["counts"]["pending"], 0, "{done}");

    // Each server acted on once, and only the group's servers.
    let actions = sys.actions().await;
    let mut servers: Vec<Option<i64>> = actions
        .iter()
        .filter(|a| a.batch_id == Some(batch_id))
        .map(|a| a.server_id)
        .collect();
    assert_eq!(servers.len(), 5, "{actions:?}");
    servers.sort_unstable();
    servers.dedup();
    assert_eq!(servers.len(), 5, "one action per server: {actions:?}");
    assert!(
        actions.iter().all(|a| a.actor == "user:olga"),
        "{actions:?}"
    );
    for (agent, backend, server, state) in [
        (&agent1, "web", "hosta_shop_1", "drain"),
        (&agent1, "web", "hostb_shop_1", "drain"),
        (&agent1, "cart", "hosta_cart_1", "drain"),
        (&agent2, "web", "hosta_shop_1", "drain"),
        (&agent2, "web", "hostb_shop_1", "drain"),
        (&agent1, "web", "hosta_other_1", "ready"),
        (&agent1, "cart", "spare1", "ready"),
        (&agent2, "web", "spare2", "ready"),
    ] {
        assert_eq!(
            agent.server(backend, server).await["admin_state"],
            state,
            "{backend}/{server}"
        );
    }

    // Sent again after it finished: the same answer, nothing new.
    let (status, third) = api
        .post("/api/haproxy/batch/action", OPERATOR, &batch)
        .await;
    assert_eq!((status, &third), (202, &first));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sys.actions().await.len(), 5, "no new action");
    api.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_need_no_token() {
    let sys = TestSystem::start().await;
    seed_inventory(&sys).await;
    sys.exec(
        "INSERT INTO haproxy_instances (id, name, fagent_url, fagent_token_ref, breaker_state, consecutive_failures, opened_at) \
           VALUES (902, 'lb-open', 'http://127.0.0.1:9', 'token:x', 'open', 3, now()); \
         INSERT INTO haproxy_actions (transaction_id, server_id, action, status, actor, requested_at, started_at, finished_at) VALUES \
           (gen_random_uuid(), 90001, 'drain', 'success', 'user:a', now() - interval '2 seconds', now(), now() - interval '1.98 seconds'), \
           (gen_random_uuid(), 90001, 'ready', 'success', 'user:a', now() - interval '3 seconds', now(), now()), \
           (gen_random_uuid(), 90002, 'drain', 'failed', 'user:a', now() - interval '2 hours', now(), now() - interval '2 hours'), \
           (gen_random_uuid(), 90003, 'drain', 'pending', 'user:a', now(), NULL, NULL); \
         INSERT INTO haproxy_sync_runs (transaction_id, instance_id, reason, actor, status, counts, requested_at, finished_at) VALUES \
           (gen_random_uuid(), 901, 'force', 'user:a', 'success', \
            '{\"total_ms\": 1500, \"state_changes\": 2, \"new\": 3, \"removed\": 1}', now(), now());",
    )
    .await;
    let api = Api::start(&sys).await;

    let (status, health) = api.send(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")));
    let (status, ready) = api.send(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["postgres"], "ok");
    assert_eq!(ready["rabbitmq"], "ok");

    let (status, text) = api.text("/metrics").await;
    assert_eq!(status, 200);
    let actions_queue = &sys.topology.actions_queue;
    for line in [
        "haproxy_control_database_up 1".to_owned(),
        "haproxy_control_broker_up 1".to_owned(),
        "haproxy_control_breaker_open{instance=\"lb-open\"} 1".to_owned(),
        "haproxy_control_breaker_open{instance=\"lb-sql\"} 0".to_owned(),
        "haproxy_control_breaker_consecutive_failures{instance=\"lb-open\"} 3".to_owned(),
        "haproxy_control_sync_last_duration_seconds{instance=\"lb-sql\"} 1.5".to_owned(),
        "haproxy_control_sync_last_changes{instance=\"lb-sql\",kind=\"state_changes\"} 2"
            .to_owned(),
        "haproxy_control_sync_last_changes{instance=\"lb-sql\",kind=\"new\"} 3".to_owned(),
        "haproxy_control_sync_last_changes{instance=\"lb-sql\",kind=\"removed\"} 1".to_owned(),
        format!("haproxy_control_queue_messages{{queue=\"{actions_queue}\"}} 0"),
        "haproxy_control_dead_letter_messages 0".to_owned(),
        "haproxy_control_rollouts{status=\"halted\"} 0".to_owned(),
        "# TYPE haproxy_control_action_duration_seconds histogram".to_owned(),
        "haproxy_control_action_duration_seconds_count 0".to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    // Counters are counted where things happen, not read from the actions.
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("haproxy_control_actions_total")
                && l.contains("status=\"pending\"")),
        "{text}"
    );
    api.stop().await;
}

#[tokio::test]
async fn readiness_follows_the_broker_connection_and_commands_answer_503_meanwhile() {
    // Its logs (lapin's recovery included) are shown if it fails: it did,
    // under full-suite load, with a publish that got no confirm.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,lapin=debug")
        .with_test_writer()
        .try_init();
    let sys = TestSystem::start().await;
    seed_inventory(&sys).await;
    let broker = TcpProxy::start("127.0.0.1:5672".parse().expect("addr")).await;
    let mut config = sys.config();
    config.amqp.url = format!("amqp://guest:guest@{}/%2f", broker.addr);
    config.amqp.reconnect_attempts = 1000;
    let api = Api::start_with(config).await;
    let (status, _) = api.send(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200);

    broker.set_mode(Mode::Reset);
    broker.cut();
    let not_ready = eventually(WAIT, "/readyz to answer 503", || async {
        let (status, body) = api.send(Method::GET, "/readyz", None, None).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_error(&(503, not_ready.clone()), 503, "not_ready");
    assert_eq!(not_ready["status"], "not_ready");
    assert_eq!(not_ready["postgres"], "ok");

    // A command meanwhile: recorded, not published, 503 naming the
    // transaction to send again; reads still work.
    let txn = Uuid::new_v4().to_string();
    let body = json!({"action": "drain", "transaction_id": txn});
    let r = api
        .http
        .post(format!("{}/api/haproxy/servers/90001/action", api.url))
        .bearer_auth(OPERATOR)
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 503);
    let answer: Value = r.json().await.expect("json");
    assert_eq!(answer["error"]["code"], "broker_unavailable", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&txn))
    );
    assert_eq!(api.get("/api/haproxy/instances", VIEWER).await.0, 200);

    broker.set_mode(Mode::Forward);
    eventually(WAIT, "/readyz to answer 200 again", || async {
        let (status, _) = api.send(Method::GET, "/readyz", None, None).await;
        (status == 200).then_some(())
    })
    .await;
    // The same request again publishes the recorded action.
    let (status, accepted) = api
        .post("/api/haproxy/servers/90001/action", OPERATOR, &body)
        .await;
    assert_eq!(
        (status, &accepted["status"]),
        (202, &json!("pending")),
        "{accepted}"
    );
    assert_eq!(sys.depth(&sys.topology.actions_queue).await, 1);
    api.stop().await;
}

#[tokio::test]
async fn the_committed_openapi_document_is_the_one_served() {
    let sys = TestSystem::start().await;
    let api = Api::start(&sys).await;
    let (status, served) = api.send(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/api.openapi.json");
    let pretty = format!("{}\n", serde_json::to_string_pretty(&served).expect("json"));
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &pretty).expect("write schemas/api.openapi.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let committed_value: Value = serde_json::from_str(&committed).unwrap_or(Value::Null);
    assert!(
        committed_value == served && committed == pretty,
        "schemas/api.openapi.json differs from the served document; regenerate it with \
         `UPDATE_OPENAPI=1 cargo nextest run -E 'test(/openapi/)'` and commit it"
    );

    // Every path of the contract, with bearer security where a token is needed.
    for (path, method) in [
        ("/api/haproxy/instances", "get"),
        ("/api/haproxy/instances/{id}/backends", "get"),
        ("/api/haproxy/backends/{id}/servers", "get"),
        ("/api/haproxy/servers/{id}/history", "get"),
        ("/api/haproxy/servers/{id}/action", "post"),
        ("/api/haproxy/actions/{transaction_id}", "get"),
        ("/api/haproxy/instances/{id}/sync", "post"),
        ("/api/haproxy/batch/action", "post"),
        ("/api/haproxy/batches/{id}", "get"),
        ("/api/servers/{id}/haproxy", "put"),
    ] {
        let op = &served["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
        assert!(
            op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .is_some_and(|r| r.ends_with("/ErrorBody")),
            "{method} {path}: 401 documented with the error schema"
        );
    }
    for path in ["/healthz", "/readyz", "/metrics", "/api/openapi.json"] {
        let op = &served["paths"][path]["get"];
        assert!(op.is_object() && op.get("security").is_none(), "{path}");
    }
    assert_eq!(
        served["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer"})
    );
    assert!(
        served["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    api.stop().await;
}
