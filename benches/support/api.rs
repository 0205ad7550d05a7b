//! The coordinator API calls every bench starts with: a pool with a join token, and
//! endpoints registered with it.

use pacpool::proto::RegisterResponse;

/// Creates pool `name` with the admin token and a join token for it: (pool id, join token).
pub async fn pool_with_join_token(
    http: &reqwest::Client,
    api: &str,
    admin: &str,
    name: &str,
) -> (i64, String) {
    let pool: serde_json::Value = http
        .post(format!("{api}/pools"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pool_id = pool["id"].as_i64().expect("the new pool's id");
    let join: serde_json::Value = http
        .post(format!("{api}/pools/{pool_id}/join-tokens"))
        .bearer_auth(admin)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let join = join["token"].as_str().expect("the join token").to_owned();
    (pool_id, join)
}

/// Registers endpoint `name` with join token `join`.
pub async fn register(
    http: &reqwest::Client,
    api: &str,
    join: &str,
    name: &str,
) -> RegisterResponse {
    http.post(format!("{api}/register"))
        .json(&serde_json::json!({ "join_token": join, "name": name }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
