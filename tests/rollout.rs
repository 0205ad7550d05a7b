//! Rollouts (issue #14) against a real coordinator (real SQLite, real WebSockets) with
//! hundreds of simulated endpoints speaking the real protocol (`support::sim`) for the gate
//! arithmetic, and real pacpoold daemons with real pacman for the canary that cannot install
//! its target. Time moves only through the coordinator's test clock (`test_clock`), never by
//! sleeping for soak times or windows; the only waits are for real work (syncs) to finish.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pacpool::localdb::Reason;
use pacpool::snapshot::{PackageState, Snapshot, SnapshotHash};
use serde_json::{Value, json};
use support::coordinator::{ADMIN, Coordinator, admin_async};
use support::sim::{OnSync, SimEndpoint};

fn pkg(name: &str, version: &str) -> PackageState {
    PackageState {
        name: name.parse().unwrap(),
        version: version.parse().unwrap(),
        arch: "x86_64".parse().unwrap(),
        reason: Reason::Explicit,
        repo: Some("core".parse().unwrap()),
    }
}

fn state(tool: &str) -> Snapshot {
    Snapshot::new(vec![pkg("base", "1-1"), pkg("tool", tool)]).unwrap()
}

fn start_coordinator(db: &std::path::Path, addr: Option<std::net::SocketAddr>) -> Coordinator {
    Coordinator::start_with(db, addr, |s| {
        s.test_clock = true;
        s.rollout_step_ms = 200;
        // Clock jumps of days must not make the simulated endpoints "offline".
        s.offline_after_secs = 90 * 86_400;
    })
}

struct Pool {
    base: String,
    id: i64,
    join: String,
}

async fn admin(base: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = admin_async(base, method, path, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

async fn make_pool(base: &str, name: &str) -> Pool {
    let p = admin(
        base,
        "POST",
        "/pools",
        Some(json!({"name": name, "policy": {"auto_sync": "apply"}})),
    )
    .await;
    let id = p["id"].as_i64().unwrap();
    let j = admin(
        base,
        "POST",
        &format!("/pools/{id}/join-tokens"),
        Some(json!({})),
    )
    .await;
    Pool {
        base: base.to_owned(),
        id,
        join: j["token"].as_str().unwrap().to_owned(),
    }
}

impl Pool {
    async fn get(&self, path: &str) -> Value {
        admin(&self.base, "GET", path, None).await
    }

    async fn rollout(&self) -> Value {
        self.get(&format!("/pools/{}/rollout", self.id)).await
    }

    async fn set_rings(&self, rollout: Value) {
        let policy = json!({"auto_sync": "apply", "rollout": rollout});
        admin(
            &self.base,
            "PATCH",
            &format!("/pools/{}", self.id),
            Some(json!({ "policy": policy })),
        )
        .await;
    }

    /// Runs the rollout steps at the current time and returns when they committed.
    async fn step(&self) {
        admin(&self.base, "POST", "/clock", Some(json!({}))).await;
    }

    async fn advance(&self, secs: i64) {
        admin(
            &self.base,
            "POST",
            "/clock",
            Some(json!({ "advance": secs })),
        )
        .await;
    }

    async fn now(&self) -> i64 {
        self.get("/clock").await["now"].as_i64().unwrap()
    }

    /// Every operation of the pool (oldest first).
    async fn operations(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<i64> = None;
        loop {
            let q = match cursor {
                Some(c) => format!("/operations?pool={}&limit=1000&cursor={c}", self.id),
                None => format!("/operations?pool={}&limit=1000", self.id),
            };
            let page = self.get(&q).await;
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next"].as_i64() {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        out.reverse();
        out
    }

    /// The whole audit log, oldest first (commit order: one writer).
    async fn audit(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<i64> = None;
        loop {
            let q = match cursor {
                Some(c) => format!("/audit?limit=1000&cursor={c}"),
                None => "/audit?limit=1000".to_owned(),
            };
            let page = self.get(&q).await;
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next"].as_i64() {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        out.reverse();
        out
    }

    async fn endpoints(&self) -> Vec<Value> {
        self.get(&format!("/pools/{}/endpoints", self.id))
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits (polling the coordinator's stored state) until `cond` holds for the rollout.
    async fn wait_rollout(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.rollout().await;
            if cond(&r) {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waited a minute for {what}; rollout: {r:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What an endpoint's own token gets from `GET /endpoint/offer`.
async fn offer(base: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/api/v1/endpoint/offer"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An endpoint sets `snap` as the pool target (after reporting it).
async fn set_target(base: &str, token: &str, snap: &Snapshot, expected: u64) -> Value {
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/api/v1/endpoint/report"))
        .bearer_auth(token)
        .json(&json!({"kind": "full", "snapshot": snap}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");
    let r = client
        .post(format!("{base}/api/v1/endpoint/target"))
        .bearer_auth(token)
        .json(&json!({"expected_revision": expected, "snapshot": snap.hash()}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");
    r.json().await.unwrap()
}

fn states(list: &[&Snapshot]) -> Arc<HashMap<SnapshotHash, Snapshot>> {
    Arc::new(list.iter().map(|s| (s.hash(), (*s).clone())).collect())
}

fn wave(r: &Value, i: usize) -> &Value {
    &r["waves"][i]
}

fn done(w: &Value) -> u64 {
    w["succeeded"].as_u64().unwrap() + w["failed"].as_u64().unwrap()
}

/// Starts `n` simulated endpoints named `prefix-NNN` (those in `failing` fail their sync).
async fn fleet(
    pool: &Pool,
    prefix: &str,
    n: usize,
    failing: &[usize],
    start: &Snapshot,
    known: &Arc<HashMap<SnapshotHash, Snapshot>>,
) -> Vec<SimEndpoint> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let on = if failing.contains(&i) {
            OnSync::Fail
        } else {
            OnSync::Succeed
        };
        out.push(
            SimEndpoint::start(
                &pool.base,
                &pool.join,
                &format!("{prefix}-{i:03}"),
                start.clone(),
                known.clone(),
                on,
            )
            .await,
        );
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 300 simulated endpoints in three rings: the canary syncs first; the next ring waits for
/// the canary's soak time and gate (successes and failures counted from stored results);
/// the second ring never has more than its `max_concurrent` syncs at once, checked by
/// replaying the coordinator's audit log (every slot taken and freed, in commit order).
#[test]
fn waves_wait_for_soak_and_gate_and_slots_hold() {
    let dir = tempfile::tempdir().unwrap();
    let coord = start_coordinator(&dir.path().join("c.db"), None);
    runtime().block_on(async {
        let base = coord.url();
        let pool = make_pool(&base, "fleet").await;
        let (s1, s2) = (state("1.0-1"), state("1.1-1"));
        let known = states(&[&s1, &s2]);
        // The machine the new target comes from: unlisted, so in the last ring.
        let builder = SimEndpoint::start(
            &base,
            &pool.join,
            "builder",
            s1.clone(),
            known.clone(),
            OnSync::Succeed,
        )
        .await;
        set_target(&base, &builder.token, &s1, 0).await;
        pool.set_rings(json!({"rings": [
            {"name": "canary", "endpoints": ["c-*"], "soak_secs": 3600,
             "gate": {"min_success": 2, "min_success_percent": 80, "max_failures": 1}},
            {"name": "early", "endpoints": ["e-*"], "soak_secs": 7200, "max_concurrent": 10,
             "gate": {"min_success_percent": 90, "max_failures": 2}},
            {"name": "rest"}
        ]}))
        .await;
        let canary = fleet(&pool, "c", 5, &[4], &s1, &known).await;
        let early = fleet(&pool, "e", 40, &[0, 1], &s1, &known).await;
        let rest = fleet(&pool, "r", 250, &[], &s1, &known).await;
        let early_ids: HashSet<i64> = early.iter().map(|e| e.id).collect();
        let canary_ids: HashSet<i64> = canary.iter().map(|e| e.id).collect();

        set_target(&base, &builder.token, &s2, 1).await;
        let r = pool
            .wait_rollout("the canary's 5 syncs", |r| done(wave(r, 0)) == 5)
            .await;
        // One step over the whole pool (297 endpoints), answered after it committed: printed
        // for the record, not asserted.
        let t = std::time::Instant::now();
        pool.step().await;
        eprintln!("a rollout step over 297 endpoints took {:?}", t.elapsed());
        let r2 = pool.rollout().await;
        assert_eq!(r2["rings_offered"], 1, "soak not over: {r2:#}");
        let w = wave(&r, 0);
        assert_eq!(
            (w["succeeded"].as_u64(), w["failed"].as_u64()),
            (Some(4), Some(1)),
            "{r:#}"
        );
        // max(2, 80 % of 5) = 4 successes needed, 1 failure allowed.
        assert_eq!(w["required"], 4);
        assert_eq!(w["gate_holds"], true, "{r:#}");
        // Only canaries were asked to sync; the others are still offered revision 1.
        let ops = pool.operations().await;
        assert!(!ops.is_empty());
        for op in &ops {
            assert!(
                canary_ids.contains(&op["endpoint_id"].as_i64().unwrap()),
                "{op}"
            );
            assert_eq!(op["target_revision"], 2);
        }
        let o = offer(&base, &early[5].token).await;
        assert_eq!(o["target"]["revision"], 1, "{o:#}");
        assert_eq!(o["rollout"]["wave"], 2);
        let msg = o["rollout"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("your machine gets revision 2 in wave 2, from "),
            "{msg}"
        );
        let eps = pool.endpoints().await;
        let e5 = eps.iter().find(|e| e["name"] == "e-005").unwrap();
        assert_eq!(e5["state"], "behind");
        assert_eq!(e5["rollout"]["message"], msg);

        // Half the soak: nothing; the whole soak: the second ring.
        pool.advance(1800).await;
        assert_eq!(pool.rollout().await["rings_offered"], 1);
        pool.advance(1800).await;
        assert_eq!(pool.rollout().await["rings_offered"], 2);
        assert_eq!(offer(&base, &early[5].token).await["target"]["revision"], 2);
        assert_eq!(offer(&base, &rest[0].token).await["target"]["revision"], 1);
        let r = pool
            .wait_rollout("the early ring's 40 syncs", |r| done(wave(r, 1)) == 40)
            .await;
        let w = wave(&r, 1);
        assert_eq!(
            (w["succeeded"].as_u64(), w["failed"].as_u64()),
            (Some(38), Some(2)),
            "{r:#}"
        );
        assert_eq!(w["required"], 36, "90 % of 40 online: {r:#}");
        assert_eq!(w["gate_holds"], true);
        pool.step().await;
        assert_eq!(
            pool.rollout().await["rings_offered"],
            2,
            "soak of 7200 s not over"
        );

        // Slots: replay every start and end of an early sync in commit order.
        let audit = pool.audit().await;
        let mut running: HashSet<String> = HashSet::new();
        let mut most = 0;
        let mut started = 0;
        for a in &audit {
            let subject = a["subject"].as_str().unwrap_or("").to_owned();
            let detail = a["detail"].as_str().unwrap_or("");
            match a["action"].as_str().unwrap() {
                "operation.create" if a["actor"] == "rollout" => {
                    let ep: i64 = detail.rsplit("endpoint:").next().unwrap().parse().unwrap();
                    if early_ids.contains(&ep) {
                        running.insert(subject);
                        started += 1;
                    }
                }
                "operation.update"
                    if detail.ends_with("-> completed")
                        || detail.ends_with("-> failed")
                        || detail.ends_with("-> cancelled") =>
                {
                    running.remove(&subject);
                }
                "operation.cancel" => {
                    running.remove(&subject);
                }
                _ => {}
            }
            most = most.max(running.len());
            assert!(
                running.len() <= 10,
                "more than 10 early syncs at once at audit entry {a}"
            );
        }
        assert_eq!(started, 40);
        assert_eq!(most, 10, "the slots were used to the full");

        // The early ring's soak: the rest (250, no slot limit) follows.
        pool.advance(7200).await;
        let r = pool
            .wait_rollout("the rest's 250 syncs", |r| done(wave(r, 2)) == 250)
            .await;
        assert_eq!(wave(&r, 2)["succeeded"], 250);
        let eps = pool.endpoints().await;
        let in_sync = eps.iter().filter(|e| e["state"] == "in-sync").count();
        // Everyone but the three that failed.
        assert_eq!(in_sync, eps.len() - 3, "{eps:#?}");
        drop((canary, early, rest, builder));
    });
}

/// A canary whose sync fails halts the rollout: admins are told (admin socket, metrics), the
/// later rings are never offered the target however long one waits; a coordinator restart
/// changes nothing; pause holds it; resume continues.
#[test]
fn failed_canary_halts_restart_keeps_it_resume_continues() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mut coord = start_coordinator(&db, None);
    let addr = coord.addr;
    let rt = runtime();
    let (pool_id, base, tokens, s1, s2) = rt.block_on(async {
        let base = coord.url();
        let pool = make_pool(&base, "lab").await;
        let (s1, s2) = (state("1.0-1"), state("2.0-1"));
        let known = states(&[&s1, &s2]);
        let builder = SimEndpoint::start(
            &base,
            &pool.join,
            "builder",
            s1.clone(),
            known.clone(),
            OnSync::Succeed,
        )
        .await;
        set_target(&base, &builder.token, &s1, 0).await;
        // Holds need rings.
        let (status, v) = admin_async(
            &base,
            "POST",
            &format!("/endpoints/{}/hold", builder.id),
            Some(json!({"reason": "x", "until": pool.now().await + 60})),
        )
        .await;
        assert_eq!((status, v["code"].as_str()), (409, Some("no_rings")), "{v}");
        pool.set_rings(json!({"rings": [
            {"name": "canary", "endpoints": ["c-*"], "soak_secs": 600},
            {"name": "early", "endpoints": ["e-*"], "soak_secs": 600},
            {"name": "rest"}
        ]}))
        .await;
        let canary = fleet(&pool, "c", 3, &[1], &s1, &known).await;
        let early = fleet(&pool, "e", 5, &[], &s1, &known).await;
        let rest = fleet(&pool, "r", 5, &[], &s1, &known).await;

        // The admin socket hears of the halt.
        let mut req = format!(
            "{}/api/v1/pools/{}/ws",
            base.replacen("http", "ws", 1),
            pool.id
        )
        .into_client_request()
        .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
        let (mut admin_ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();

        set_target(&base, &builder.token, &s2, 1).await;
        let r = pool
            .wait_rollout("the halt", |r| r["state"] == "halted")
            .await;
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("wave 1 (canary): 1 syncs to revision 2 failed"),
            "{r:#}"
        );
        loop {
            let m = admin_ws.next().await.unwrap().unwrap();
            let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
            if v["type"] == "rollout_changed" && v["rollout"]["state"] == "halted" {
                break;
            }
        }
        let metrics = reqwest::get(format!("{base}/api/v1/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("pacpool_rollouts_halted 1"), "{metrics}");

        // However long: the second ring is never offered revision 2.
        pool.advance(86_400).await;
        let r = pool.rollout().await;
        assert_eq!(
            (r["state"].as_str(), r["rings_offered"].as_u64()),
            (Some("halted"), Some(1))
        );
        for e in early.iter().chain(&rest) {
            let o = offer(&base, &e.token).await;
            assert_eq!(o["target"]["revision"], 1, "{o:#}");
            assert!(
                o["rollout"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("is halted in wave 1"),
                "{o:#}"
            );
        }
        let o = offer(&base, &canary[0].token).await;
        assert_eq!(
            o["rollout"]["message"],
            "revision 2 is offered to this machine (wave 1), but its rollout is halted: automatic syncs wait for an admin"
        );
        let not_canary: HashSet<i64> = early.iter().chain(&rest).map(|e| e.id).collect();
        assert!(
            pool.operations()
                .await
                .iter()
                .all(|o| !not_canary.contains(&o["endpoint_id"].as_i64().unwrap()))
        );
        let tokens: Vec<(i64, String, String)> = canary
            .iter()
            .chain(&early)
            .chain(&rest)
            .map(|e| (e.id, e.name.clone(), e.token.clone()))
            .collect();
        (pool.id, base, tokens, s1, s2)
    });
    // Restart mid-rollout (the simulated endpoints' sockets close with it).
    let before = rt.block_on(async {
        let pool = Pool {
            base: base.clone(),
            id: pool_id,
            join: String::new(),
        };
        let mut r = pool.rollout().await;
        let mut offers = Vec::new();
        for (_, _, t) in &tokens {
            offers.push(offer(&base, t).await);
        }
        r["updated_at"] = Value::Null;
        (r, offers, pool.operations().await)
    });
    coord.stop();
    let coord = start_coordinator(&db, Some(addr));
    rt.block_on(async {
        let pool = Pool {
            base: base.clone(),
            id: pool_id,
            join: String::new(),
        };
        // The clock of a new process starts at the system time: move it past the old one.
        pool.advance(86_400).await;
        let mut r = pool.rollout().await;
        r["updated_at"] = Value::Null;
        let mut offers = Vec::new();
        for (_, _, t) in &tokens {
            offers.push(offer(&base, t).await);
        }
        assert_eq!(r, before.0, "the rollout after a restart");
        for (a, b) in offers.iter().zip(&before.1) {
            assert_eq!(a["target"], b["target"]);
            assert_eq!(
                a["rollout"]["offered_revision"],
                b["rollout"]["offered_revision"]
            );
        }
        assert_eq!(pool.operations().await, before.2);
        let metrics = reqwest::get(format!("{base}/api/v1/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("pacpool_rollouts_halted 1"), "{metrics}");

        // The endpoints come back; an admin resumes: the failure is accepted, wave 2 follows.
        let known = states(&[&s1, &s2]);
        let mut sims = Vec::new();
        for (id, name, token) in &tokens {
            let st = if name.starts_with("c-") && name != "c-001" {
                s2.clone()
            } else {
                s1.clone()
            };
            sims.push(
                SimEndpoint::connect_as(
                    &base,
                    *id,
                    name,
                    token,
                    st,
                    known.clone(),
                    OnSync::Succeed,
                )
                .await,
            );
        }
        let r = admin(
            &base,
            "POST",
            &format!("/pools/{pool_id}/rollout/resume"),
            None,
        )
        .await;
        assert_eq!(r["state"], "active", "{r:#}");
        let r = pool
            .wait_rollout("wave 2 synced", |r| done(wave(r, 1)) == 5)
            .await;
        assert_eq!(r["rings_offered"], 2);
        assert_eq!(wave(&r, 1)["succeeded"], 5);
        // Paused: the soak passes, nothing moves; resumed: the rest follows.
        admin(
            &base,
            "POST",
            &format!("/pools/{pool_id}/rollout/pause"),
            None,
        )
        .await;
        pool.advance(600).await;
        let r = pool.rollout().await;
        assert_eq!(
            (r["state"].as_str(), r["rings_offered"].as_u64()),
            (Some("paused"), Some(2))
        );
        admin(
            &base,
            "POST",
            &format!("/pools/{pool_id}/rollout/resume"),
            None,
        )
        .await;
        let r = pool
            .wait_rollout("wave 3 synced", |r| done(wave(r, 2)) == 5)
            .await;
        assert_eq!(wave(&r, 2)["succeeded"], 5);
        let metrics = reqwest::get(format!("{base}/api/v1/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("pacpool_rollouts_halted 0"), "{metrics}");
        // The policy loses two rings mid-way: nothing breaks, every machine is in the one left.
        pool.set_rings(json!({"rings": [{"name": "all"}]})).await;
        pool.step().await;
        let r = pool.rollout().await;
        assert_eq!(r["waves"].as_array().unwrap().len(), 1, "{r:#}");
        drop(sims);
    });
    drop(coord);
}

/// Maintenance windows (a future window blocks an automatic sync, inside it the sync runs, a
/// window already past this week blocks the next revision), a slot held by an endpoint that
/// went away is freed after the timeout, and a held endpoint stays behind (status `held`,
/// with its reason) and joins at the hold's expiry.
#[test]
fn windows_slots_and_holds() {
    let dir = tempfile::tempdir().unwrap();
    let coord = start_coordinator(&dir.path().join("c.db"), None);
    runtime().block_on(async {
        let base = coord.url();
        let pool = make_pool(&base, "office").await;
        let (s1, s2, s3) = (state("1-1"), state("2-1"), state("3-1"));
        let known = states(&[&s1, &s2, &s3]);
        let builder = SimEndpoint::start(
            &base,
            &pool.join,
            "builder",
            s1.clone(),
            known.clone(),
            OnSync::Succeed,
        )
        .await;
        set_target(&base, &builder.token, &s1, 0).await;
        // Next Monday 00:00 UTC (1970-01-01 was a Thursday).
        let now = pool.now().await;
        let day = now.div_euclid(86_400);
        let monday = (day + 7 - (day + 3).rem_euclid(7)) * 86_400;
        admin(&base, "POST", "/clock", Some(json!({"set": monday}))).await;
        pool.set_rings(json!({"slot_timeout_secs": 600, "rings": [
            {"name": "canary", "endpoints": ["c-*"], "max_concurrent": 1,
             "gate": {"min_success_percent": 50},
             "windows": [{"days": ["mon"], "from": "03:00", "to": "04:00"}]},
            {"name": "rest"}
        ]}))
        .await;
        let hang = SimEndpoint::start(
            &base,
            &pool.join,
            "c-0",
            s1.clone(),
            known.clone(),
            OnSync::Hang,
        )
        .await;
        let c1 = SimEndpoint::start(
            &base,
            &pool.join,
            "c-1",
            s1.clone(),
            known.clone(),
            OnSync::Succeed,
        )
        .await;
        let r0 = SimEndpoint::start(
            &base,
            &pool.join,
            "r-0",
            s1.clone(),
            known.clone(),
            OnSync::Succeed,
        )
        .await;
        let held = SimEndpoint::start(
            &base,
            &pool.join,
            "r-held",
            s1.clone(),
            known.clone(),
            OnSync::Succeed,
        )
        .await;
        let until = monday + 2 * 86_400;
        admin(
            &base,
            "POST",
            &format!("/endpoints/{}/hold", held.id),
            Some(json!({"reason": "waiting for the driver fix", "until": until})),
        )
        .await;

        // Monday 00:00: the canary ring is offered revision 2, but its window opens at 03:00.
        set_target(&base, &builder.token, &s2, 1).await;
        pool.step().await;
        assert!(
            pool.operations().await.is_empty(),
            "no sync before the window"
        );
        let o = offer(&base, &c1.token).await;
        assert_eq!(o["target"]["revision"], 2);
        assert_eq!(o["rollout"]["not_before"], monday + 3 * 3600);
        let msg = o["rollout"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("your machine gets revision 2 in wave 1, from Monday "),
            "{msg}"
        );
        assert!(msg.ends_with(" 03:00 UTC"), "{msg}");
        // The machine the revision came from (wave 2) has it already, and may set the next.
        assert_eq!(offer(&base, &builder.token).await["target"]["revision"], 2);
        assert_eq!(offer(&base, &r0.token).await["target"]["revision"], 1);

        // 03:00: inside the window; one slot, taken by c-0 which never finishes.
        pool.advance(3 * 3600).await;
        let ops = pool.operations().await;
        assert_eq!(ops.len(), 1, "one slot: {ops:#?}");
        assert_eq!(ops[0]["endpoint_id"], hang.id);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while pool.operations().await[0]["state"] != "in_progress" {
            assert!(std::time::Instant::now() < deadline, "c-0 never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // c-0 goes away; after the slot timeout its slot is freed and c-1 syncs.
        drop(hang);
        pool.advance(300).await;
        assert_eq!(
            pool.operations().await.len(),
            1,
            "slot still held within the timeout"
        );
        pool.advance(301).await;
        let r = pool
            .wait_rollout("c-1 synced", |r| wave(r, 0)["succeeded"] == 1)
            .await;
        let ops = pool.operations().await;
        assert_eq!(ops[0]["state"], "cancelled", "{ops:#?}");
        assert!(
            ops[0]["result"]["message"]
                .as_str()
                .unwrap()
                .starts_with("slot freed")
        );
        assert_eq!(r["waves"][0]["failed"], 0, "a freed slot is not a failure");

        // The canary passed (1 of 2): the rest ring (no window) follows; the held one stays.
        let r = pool
            .wait_rollout("r-0 synced", |r| wave(r, 1)["succeeded"] == 1)
            .await;
        assert_eq!(r["rings_offered"], 2);
        pool.step().await;
        let eps = pool.endpoints().await;
        let h = eps.iter().find(|e| e["name"] == "r-held").unwrap();
        assert_eq!(h["state"], "held", "{h:#}");
        let expected = format!(
            "on hold until {}: waiting for the driver fix",
            jiff_date(until)
        );
        assert_eq!(h["rollout"]["message"], expected.as_str());
        assert_eq!(offer(&base, &held.token).await["target"]["revision"], 1);
        assert!(
            pool.operations()
                .await
                .iter()
                .all(|o| o["endpoint_id"] != held.id)
        );

        // The hold ends: it is offered revision 2 and syncs.
        pool.advance(2 * 86_400).await;
        let r = pool
            .wait_rollout("r-held synced", |r| wave(r, 1)["succeeded"] == 2)
            .await;
        assert_eq!(wave(&r, 1)["failed"], 0);
        let eps = pool.endpoints().await;
        let h = eps.iter().find(|e| e["name"] == "r-held").unwrap();
        assert_eq!(h["state"], "in-sync", "{h:#}");

        // Wednesday: this week's Monday window is past; revision 3 waits for next Monday.
        set_target(&base, &builder.token, &s3, 2).await;
        pool.step().await;
        let news: Vec<Value> = pool
            .operations()
            .await
            .into_iter()
            .filter(|o| o["target_revision"] == 3)
            .collect();
        assert!(news.is_empty(), "{news:#?}");
        let o = offer(&base, &c1.token).await;
        assert_eq!(o["rollout"]["not_before"], monday + 7 * 86_400 + 3 * 3600);
        drop((c1, r0, held, builder));
    });
}

/// `2026-12-20` for Unix seconds (UTC), as hold messages print it.
fn jiff_date(t: i64) -> String {
    let days = t.div_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm), to stay independent of the code under test.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// An admin request with any method from blocking code.
fn admin_blocking(coord: &Coordinator, method: &str, path: &str, body: Option<Value>) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, v) = rt.block_on(admin_async(&coord.url(), method, path, body));
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

/// Waits until the coordinator's rollout of `pool` satisfies `cond` (real syncs run meanwhile).
fn wait_rollout_blocking(
    coord: &Coordinator,
    pool: i64,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let r = coord.admin("GET", &format!("/pools/{pool}/rollout"), None);
        if cond(&r) {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited for {what}; rollout: {r:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Real pacpoold daemons on sandboxes with real pacman: the canary syncs first while the
/// other machine waits (its status says for which wave and from when); after the soak the
/// other syncs. A revision whose package the canary cannot install (a file in the way)
/// halts the rollout: the other machine is never offered it, also across a coordinator
/// restart; the admin reverts the target and every machine gets the revert at once.
#[test]
fn real_daemons_canary_first_and_halt_on_a_package_that_cannot_be_installed() {
    use support::daemon::{Daemon, write_config};
    use support::{PkgSpec, Sandbox, host_arch};
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED rollout with real pacman: pacman transactions need root");
        return;
    }
    support::require_tools();
    let (b, c, o) = (Sandbox::new(), Sandbox::new(), Sandbox::new());
    let publish = |specs: &[(&str, &str)]| {
        let built: Vec<std::path::PathBuf> = specs
            .iter()
            .map(|(n, v)| b.build_package(&PkgSpec::new(n, v).arch(&host_arch())))
            .collect();
        for sb in [&b, &c, &o] {
            sb.publish(&built);
        }
    };
    publish(&[("tool", "1.0-1")]);
    for sb in [&b, &c, &o] {
        sb.pacman_ok(&["-Sy", "tool"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mut coord = start_coordinator(&db, None);
    let addr = coord.addr;
    let pool = coord.admin(
        "POST",
        "/pools",
        Some(json!({"name": "desk", "policy": {"auto_sync": "apply"}})),
    );
    let pool_id = pool["id"].as_i64().unwrap();
    let join = coord.admin("POST", &format!("/pools/{pool_id}/join-tokens"), None);
    let join = join["token"].as_str().unwrap().to_owned();
    let url = coord.url();
    let db_ = Daemon::start(&write_config(&b, "builder", Some((&url, &join))));
    let dc = Daemon::start(&write_config(&c, "canary", Some((&url, &join))));
    let d_o = Daemon::start(&write_config(&o, "other", Some((&url, &join))));
    for d in [&db_, &dc, &d_o] {
        d.wait_status("connected", |s| s["link"] == "connected");
    }
    db_.cli_code(&["set-latest", "--yes"], 0);
    for d in [&dc, &d_o] {
        d.wait_status("revision 1, in sync", |s| {
            s["target"]["revision"] == 1 && s["state"] == "in-sync"
        });
    }
    let rings = json!([
        {"name": "canary", "endpoints": ["canary"], "soak_secs": 3600,
         "gate": {"min_success": 1, "max_failures": 0}},
        {"name": "rest"}
    ]);
    admin_blocking(
        &coord,
        "PATCH",
        &format!("/pools/{pool_id}"),
        Some(json!({"policy": {"auto_sync": "apply", "rollout": {"rings": rings}}})),
    );

    // Revision 2 (tool 1.1): the canary syncs on its own (the coordinator starts it).
    publish(&[("tool", "1.1-1")]);
    b.pacman_ok(&["-Syu"]);
    db_.cli_code(&["notify"], 0);
    db_.cli_code(&["set-latest", "--yes"], 0);
    dc.wait_status("canary synced revision 2", |s| {
        s["target"]["revision"] == 2 && s["state"] == "in-sync"
    });
    assert!(c.pacman_ok(&["-Q", "tool"]).contains("1.1-1"));
    wait_rollout_blocking(&coord, pool_id, "the canary's verified sync", |r| {
        r["waves"][0]["succeeded"] == 1
    });
    let s = d_o.wait_status("other told its wave", |s| {
        s["rollout"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("your machine gets revision 2 in wave 2, from "))
    });
    assert_eq!(s["target"]["revision"], 1, "{s:#}");
    assert_eq!(s["rollout"]["wave"], 2);
    assert!(
        d_o.cli_code(&["status"], 0)
            .contains("rollout:     your machine gets revision 2 in wave 2")
    );
    assert!(
        o.pacman_ok(&["-Q", "tool"]).contains("1.0-1"),
        "not offered yet"
    );

    // The canary's soak passes: the other machine is offered revision 2 and syncs.
    coord.admin("POST", "/clock", Some(json!({"advance": 3600})));
    d_o.wait_status("other synced revision 2", |s| {
        s["target"]["revision"] == 2 && s["state"] == "in-sync"
    });
    assert!(o.pacman_ok(&["-Q", "tool"]).contains("1.1-1"));

    // The machine's own user may hold it only when the pool allows.
    let hold = ["hold", "--until", "2099-01-01", "--reason", "exam week"];
    let refused = d_o.cli(&hold);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not let endpoints hold themselves"),
        "{refused:?}"
    );
    admin_blocking(
        &coord,
        "PATCH",
        &format!("/pools/{pool_id}"),
        Some(
            json!({"policy": {"auto_sync": "apply", "rollout": {"rings": rings, "endpoint_holds": true}}}),
        ),
    );
    d_o.cli_code(&hold, 0);
    let s = d_o.wait_status("on hold", |s| s["rollout"]["hold"]["reason"] == "exam week");
    assert_eq!(
        s["rollout"]["message"],
        "on hold until 2099-01-01: exam week"
    );
    d_o.cli_code(&["unhold"], 0);
    d_o.wait_status("hold lifted", |s| {
        s["rollout"].is_object() && s["rollout"]["hold"].is_null()
    });

    // Revision 3 adds a package the canary cannot install (a file of it is in the way).
    publish(&[("special", "1.0-1")]);
    let stray = c.root().join("usr/share/special");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("special.txt"), "not from a package\n").unwrap();
    b.pacman_ok(&["-Sy", "special"]);
    db_.cli_code(&["notify"], 0);
    db_.cli_code(&["set-latest", "--yes"], 0);
    let r = wait_rollout_blocking(&coord, pool_id, "the halt", |r| r["state"] == "halted");
    assert_eq!(r["revision"], 3);
    assert_eq!(r["waves"][0]["failed"], 1, "{r:#}");
    let s = d_o.wait_status("other told of the halt", |s| {
        s["rollout"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revision 3 is halted in wave 1"))
    });
    assert_eq!(s["target"]["revision"], 2);
    coord.admin("POST", "/clock", Some(json!({"advance": 86_400})));
    let ops = coord.admin(
        "GET",
        &format!("/operations?pool={pool_id}&limit=1000"),
        None,
    );
    let other_id = coord
        .admin("GET", &format!("/pools/{pool_id}/endpoints"), None)
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "other")
        .unwrap()["id"]
        .clone();
    assert!(
        ops["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|op| !(op["endpoint_id"] == other_id && op["target_revision"] == 3)),
        "{ops:#}"
    );
    assert!(
        !o.pacman(&["-Q", "special"]).status.success(),
        "never offered, never installed"
    );
    // The coordinator started the canary's syncs; the failure is pacman's own.
    let canary_ops: Vec<&Value> = ops["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| op["endpoint_id"] != other_id)
        .collect();
    let failed = canary_ops
        .iter()
        .find(|op| op["target_revision"] == 3)
        .expect("the canary was asked to sync revision 3");
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert!(
        failed["result"].to_string().contains("(conflicting files)"),
        "pacman refused the file in the way: {failed:#}"
    );
    assert!(
        canary_ops
            .iter()
            .any(|op| op["target_revision"] == 2 && op["state"] == "completed")
    );

    // A restart mid-rollout changes nothing.
    let mut before = coord.admin("GET", &format!("/pools/{pool_id}/rollout"), None);
    coord.stop();
    let coord = start_coordinator(&db, Some(addr));
    coord.admin("POST", "/clock", Some(json!({"advance": 2 * 86_400})));
    let mut after = coord.admin("GET", &format!("/pools/{pool_id}/rollout"), None);
    for v in [&mut before, &mut after] {
        v["updated_at"] = Value::Null;
        for w in v["waves"].as_array_mut().unwrap() {
            // Online counts follow the reconnecting daemons; the rest is stored.
            w["online"] = Value::Null;
            w["required"] = Value::Null;
        }
    }
    assert_eq!(after, before);
    let s = d_o.wait_status("other reconnected", |s| {
        s["link"] == "connected"
            && s["rollout"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("revision 3 is halted in wave 1"))
    });
    assert_eq!(s["target"]["revision"], 2);

    // The admin reverts to revision 2: offered to every ring at once.
    coord.admin(
        "POST",
        &format!("/pools/{pool_id}/target/revert"),
        Some(json!({"to_revision": 2, "expected_revision": 3})),
    );
    d_o.wait_status("other has the revert", |s| {
        s["target"]["revision"] == 4 && s["state"] == "in-sync"
    });
    dc.wait_status("canary has the revert", |s| s["target"]["revision"] == 4);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = rt.block_on(async {
        reqwest::get(format!("{}/api/v1/metrics", coord.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(metrics.contains("pacpool_rollouts_halted 0"), "{metrics}");
    drop((db_, dc, d_o));
}

/// `pacpool ARGS` against the coordinator at `url` with the test admin token.
fn admin_cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pacpool"))
        .args(args)
        .env("PACPOOL_ADMIN_URL", url)
        .env("PACPOOL_ADMIN_TOKEN", ADMIN)
        .env_remove("PACPOOL_CA_FILE")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The README's worked example is a valid pool policy through `pacpool admin`, and
/// `pacpool admin rollouts show / halt / resume` and `endpoints hold` work on it.
#[test]
fn readme_example_policy_and_admin_commands() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let from = readme
        .find("### Rollouts")
        .expect("README has a Rollouts section");
    let rest = &readme[from..];
    let open = rest.find("```toml\n").unwrap() + "```toml\n".len();
    let example = &rest[open..open + rest[open..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let coord = start_coordinator(&dir.path().join("c.db"), None);
    let url = coord.url();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, example).unwrap();
    let (code, out, err) = admin_cli(
        &url,
        &[
            "admin",
            "pools",
            "create",
            "office",
            "--policy-file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let pool = coord.admin("GET", "/pools", None)[0].clone();
    let rings = &pool["policy"]["rollout"]["rings"];
    assert_eq!(rings.as_array().unwrap().len(), 3, "{pool:#}");
    assert_eq!(rings[1]["timezone"], "Europe/Berlin");
    assert_eq!(rings[1]["max_concurrent"], 5);
    assert_eq!(rings[0]["gate"]["min_success"], 2);
    let (code, out, _) = admin_cli(&url, &["admin", "rollouts", "show", "office"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("pool 1 has no rollout"), "{out}");
    // `pools show` prints the policy in the form `set-policy` takes back.
    let (code, shown, _) = admin_cli(&url, &["admin", "pools", "show", "office"]);
    assert_eq!(code, 0);
    let toml: String = shown
        .split_once("policy (TOML, as `pools set-policy --file` takes it):\n")
        .unwrap()
        .1
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    std::fs::write(&file, &toml).unwrap();
    let (code, out, err) = admin_cli(
        &url,
        &[
            "admin",
            "pools",
            "set-policy",
            "office",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{toml}\n{out}{err}");
    assert_eq!(
        coord.admin("GET", "/pools", None)[0]["policy"],
        pool["policy"],
        "{toml}"
    );

    // A rollout to show: a builder in wave 3 sets revision 2.
    let pool_id = pool["id"].as_i64().unwrap();
    runtime().block_on(async {
        let p = Pool {
            base: url.clone(),
            id: pool_id,
            join: String::new(),
        };
        let j = admin(
            &url,
            "POST",
            &format!("/pools/{pool_id}/join-tokens"),
            Some(json!({})),
        )
        .await;
        let join = j["token"].as_str().unwrap();
        let (s1, s2) = (state("1-1"), state("2-1"));
        let known = states(&[&s1, &s2]);
        let builder = SimEndpoint::start(
            &url,
            join,
            "builder",
            s1.clone(),
            known.clone(),
            OnSync::Succeed,
        )
        .await;
        let c = SimEndpoint::start(
            &url,
            join,
            "canary-1",
            s1.clone(),
            known.clone(),
            OnSync::Succeed,
        )
        .await;
        set_target(&url, &builder.token, &s1, 0).await;
        set_target(&url, &builder.token, &s2, 1).await;
        p.step().await;
        let (code, out, err) = admin_cli(
            &url,
            &[
                "admin",
                "endpoints",
                "hold",
                &c.id.to_string(),
                "--until",
                "2099-12-20",
                "--reason",
                "waiting for the driver fix",
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains(
                "on hold until 2099-12-20 00:00:00 UTC at revision 2: waiting for the driver fix"
            ),
            "{out}"
        );
        let (code, out, _) = admin_cli(&url, &["admin", "endpoints", "unhold", &c.id.to_string()]);
        assert_eq!(code, 0, "{out}");
        drop((builder, c));
    });
    let (code, out, _) = admin_cli(&url, &["admin", "rollouts", "halt", "office"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(
            "rollout of revision 2: halted (1 of 3 waves offered)\nreason: halted by an admin\n"
        ),
        "{out}"
    );
    let (code, out, _) = admin_cli(&url, &["admin", "rollouts", "resume", "office"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("rollout of revision 2: active"), "{out}");
    let (_, list, _) = admin_cli(&url, &["admin", "endpoints", "list", "office"]);
    assert!(
        list.lines().next().unwrap().ends_with("WAVE  OFFERED"),
        "{list}"
    );
    let canary_line = list.lines().find(|l| l.contains("canary-1")).unwrap();
    assert!(canary_line.ends_with("1/3       r2"), "{list}");
    let (_, out, _) = admin_cli(&url, &["admin", "rollouts", "show", "office"]);
    eprintln!("{out}");
    let header = out.lines().nth(1).unwrap();
    assert!(
        readme.contains(header),
        "the README shows the table's header: {header}"
    );
    let (code, _, err) = admin_cli(&url, &["admin", "rollouts", "pause", "nowhere"]);
    assert_ne!(code, 0, "{err}");
}

/// Outside test mode the clock cannot be moved: `POST /clock` is refused and the time stays.
#[test]
fn the_clock_moves_only_in_test_mode() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("c.db"), None);
    let before = coord.admin("GET", "/clock", None);
    assert_eq!(before["adjustable"], false);
    let (status, v) = coord.try_admin("POST", "/clock", Some(json!({"advance": 86_400})));
    assert_eq!(status, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("test_clock is off"),
        "{v}"
    );
    let after = coord.admin("GET", "/clock", None);
    assert!(after["now"].as_i64().unwrap() - before["now"].as_i64().unwrap() < 3600);
}
