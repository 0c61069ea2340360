//! Issue 11, point 5: through the HTTP API an agent token is a value, or a
//! `file:` inside the configured token directory. `env:` references and
//! files elsewhere (absolute, `..`, a symbolic link out) are a 422: nothing
//! is stored, read or sent.

use std::path::Path;

use serde_json::{Value, json};

use crate::harness::TestSystem;
use crate::harness::api::{ADMIN, Api, assert_error};

fn settings(token: &str) -> Value {
    json!({"is_haproxy_node": true, "name": "lb-t", "fagent_url": "http://127.0.0.1:9",
           "fagent_token": token})
}

async fn stored_refs(sys: &TestSystem) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct R {
        #[diesel(sql_type = diesel::sql_types::Text)]
        fagent_token_ref: String,
    }
    haproxy_control::db::run(&sys.pool, |c| {
        use diesel::RunQueryDsl;
        Ok(
            diesel::sql_query("SELECT fagent_token_ref FROM haproxy_instances ORDER BY id")
                .load::<R>(c)?
                .into_iter()
                .map(|r| r.fagent_token_ref)
                .collect(),
        )
    })
    .await
    .expect("query")
}

/// A named pipe: opening it to read would hang the request, so an answer
/// proves it was not read.
fn fifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(status.success());
}

#[tokio::test]
async fn only_token_values_and_files_in_the_token_dir_come_through_the_api() {
    let sys = TestSystem::start().await;
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("tokens");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("lb-t"), "agent-token-in-dir").expect("write");
    std::fs::write(root.path().join("secret"), "host-secret-outside").expect("write");
    fifo(&root.path().join("pipe"));
    std::os::unix::fs::symlink(root.path().join("secret"), dir.join("to-secret")).expect("symlink");
    std::os::unix::fs::symlink(root.path().join("pipe"), dir.join("to-pipe")).expect("symlink");
    fifo(&dir.join("pipe-inside"));
    let mut config = sys.config();
    config.fagent.token_dir = Some(dir.clone());
    let api = Api::start_with(config).await;
    sys.exec("INSERT INTO servers (id, hostname) VALUES (601, 'lb-node')")
        .await;
    let path = "/api/servers/601/haproxy";
    let d = dir.display();

    let refused = [
        "env:DATABASE_URL".to_owned(),
        "env:HOME".to_owned(),
        "file:/etc/passwd".to_owned(),
        format!("file:{}", root.path().join("secret").display()),
        format!("file:{d}/../secret"),
        "file:../secret".to_owned(),
        format!("file:{d}/to-secret"),
        "file:to-pipe".to_owned(),
        "file:pipe-inside".to_owned(),
        "file:missing".to_owned(),
    ];
    for token in &refused {
        let answer = api.put(path, ADMIN, &settings(token)).await;
        assert_error(&answer, 422, "invalid_field");
        let text = answer.1.to_string();
        assert!(text.contains("fagent_token"), "{token}: {text}");
        assert!(!text.contains("host-secret"), "{token}: {text}");
        assert!(stored_refs(&sys).await.is_empty(), "{token} was stored");
    }
    let env = api.put(path, ADMIN, &settings("env:DATABASE_URL")).await;
    assert!(
        env.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("CLI")),
        "{}",
        env.1
    );

    // Accepted: a file inside the directory (stored canonical) ...
    let canonical = dir.canonicalize().expect("canonical").join("lb-t");
    let (status, body) = api.put(path, ADMIN, &settings("file:lb-t")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        stored_refs(&sys).await,
        vec![format!("file:{}", canonical.display())]
    );
    // ... and a token value.
    let (status, body) = api.put(path, ADMIN, &settings("a-plain-token")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        stored_refs(&sys).await,
        vec!["token:a-plain-token".to_owned()]
    );

    // Refused updates keep what is stored.
    for token in &refused {
        assert_error(
            &api.put(path, ADMIN, &settings(token)).await,
            422,
            "invalid_field",
        );
    }
    assert_eq!(
        stored_refs(&sys).await,
        vec!["token:a-plain-token".to_owned()]
    );
    // The stored token never goes to a new address: moving the agent needs
    // the token again in the same request.
    let moved = json!({"is_haproxy_node": true, "name": "lb-t",
                       "fagent_url": "http://attacker.example:9100"});
    let answer = api.put(path, ADMIN, &moved).await;
    assert_error(&answer, 422, "token_required");
    let url: Vec<String> = sys
        .instances()
        .await
        .into_iter()
        .map(|i| i.fagent_url)
        .collect();
    assert_eq!(url, vec!["http://127.0.0.1:9".to_owned()], "URL unchanged");
    let (status, body) = api.put(path, ADMIN, &settings("a-plain-token")).await;
    assert_eq!(status, 200, "the same URL needs no token: {body}");
    let with_token = json!({"is_haproxy_node": true, "name": "lb-t",
                            "fagent_url": "http://127.0.0.1:10", "fagent_token": "new-token"});
    let (status, body) = api.put(path, ADMIN, &with_token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stored_refs(&sys).await, vec!["token:new-token".to_owned()]);
    // Nothing was published for a worker to act on.
    sys.assert_no_commands_waiting().await;
    api.stop().await;

    // Without a token directory no file: reference comes through the API.
    let api = Api::start_with(sys.config()).await;
    let answer = api
        .put(
            path,
            ADMIN,
            &settings(&format!("file:{}", canonical.display())),
        )
        .await;
    assert_error(&answer, 422, "invalid_field");
    assert!(
        answer.1.to_string().contains("token directory"),
        "{}",
        answer.1
    );
    assert_eq!(stored_refs(&sys).await, vec!["token:new-token".to_owned()]);
    api.stop().await;
}
