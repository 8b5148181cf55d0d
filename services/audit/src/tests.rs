//! The audit log on both backends: appends, idempotency, proofs against
//! signed checkpoints, encryption and forgetting, retention, and tampering
//! by someone with direct database access.

use std::sync::Arc;

use prost_types::value::Kind;
use prost_types::{Struct, Value};
use warden_merkle::note::{Checkpoint, NoteSigner, NoteVerifier};
use warden_store::Database;

use crate::keys::MasterKey;
use crate::log::{AuditLog, Batching, EventInput, SignedCheckpoint};
use crate::store::{AppendSession, AuditStore, Filter, NewEvent};

fn text(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

fn event(id: &str, agent: &str) -> EventInput {
    EventInput {
        event_id: id.into(),
        event_type: "policy_evaluation".into(),
        time_micros: Some(1_781_524_800_000_000),
        correlation_id: format!("corr-{agent}"),
        agent_id: agent.into(),
        actor: "warden-policy-engine".into(),
        subject: String::new(),
        payload: Some(Struct { fields: [("effect".to_string(), text("allow"))].into() }),
        sensitive: None,
    }
}

async fn open(database: &Database) -> Arc<AuditLog> {
    let signer = NoteSigner::from_seed("warden.test/audit", [5; 32]).unwrap();
    AuditLog::open(
        AuditStore::new(database.clone()),
        signer,
        MasterKey::from_bytes([6; 32]),
        Batching { max_batch: 1000, stripes: 2 },
    )
    .await
    .unwrap()
}

async fn fill(log: &AuditLog, n: usize) {
    let events: Vec<EventInput> = (0..n).map(|i| event(&format!("e{i}"), &format!("agent-{}", i % 3))).collect();
    log.append(events).await.unwrap();
}

/// Checks a checkpoint's signature and returns its size and root.
fn verified(log: &AuditLog, checkpoint: &SignedCheckpoint) -> Checkpoint {
    let verifier = NoteVerifier::parse(&log.verifier_key()).unwrap();
    Checkpoint::parse(verifier.verify(&checkpoint.note).unwrap()).unwrap()
}

async fn appends_are_durable_ordered_and_idempotent(database: Database) {
    let log = open(&database).await;
    let receipts = log.append(vec![event("a", "x"), event("b", "x"), event("a", "x")]).await.unwrap();
    assert_eq!(
        receipts.iter().map(|r| (r.sequence, r.duplicate)).collect::<Vec<_>>(),
        [(0, false), (1, false), (0, true)]
    );
    let again = log.append(vec![event("b", "x"), event("c", "y")]).await.unwrap();
    assert_eq!(again.iter().map(|r| (r.sequence, r.duplicate)).collect::<Vec<_>>(), [(1, true), (2, false)]);
    assert_eq!(again[0].leaf_hash, receipts[1].leaf_hash);
    // Generated ids for events that bring none.
    let generated = log.append(vec![EventInput { event_id: String::new(), ..event("", "z") }]).await.unwrap();
    assert_eq!(generated[0].event_id.len(), 36);
    // A second log on the same database (a restart) continues the sequence.
    drop(log);
    let log = open(&database).await;
    let next = log.append(vec![event("d", "x")]).await.unwrap();
    assert_eq!(next[0].sequence, 4);
    let records = log.records(&Filter { agent_id: Some("x".into()), ..Filter::default() }, 0, 100).await.unwrap();
    assert_eq!(records.iter().map(|r| r.stored.event_id.as_str()).collect::<Vec<_>>(), ["a", "b", "d"]);
    assert_eq!(records[0].payload.as_ref().unwrap().fields["effect"], text("allow"));
    assert!(log.verify(0, 0).await.unwrap().ok);
}

async fn proofs_check_against_signed_checkpoints(database: Database) {
    let log = open(&database).await;
    fill(&log, 13).await;
    let early = log.checkpoint().await.unwrap();
    let early_head = verified(&log, &early);
    assert_eq!(early_head.size, 13);
    fill_more(&log, 13, 20).await;
    let late = log.checkpoint().await.unwrap();
    let late_head = verified(&log, &late);
    for sequence in [0, 6, 12] {
        let (size, leaf, proof) = log.inclusion_proof(sequence, 13).await.unwrap();
        assert_eq!(size, 13);
        warden_merkle::verify_inclusion(sequence, 13, &leaf, &proof, &early_head.root).unwrap();
    }
    let (size, proof) = log.consistency_proof(13, 0).await.unwrap();
    assert_eq!(size, 20);
    warden_merkle::verify_consistency(13, 20, &early_head.root, &late_head.root, &proof).unwrap();
    assert!(log.inclusion_proof(20, 0).await.is_err());
    assert!(log.consistency_proof(21, 0).await.is_err());
}

async fn proofs_span_stored_and_recomputed_levels(database: Database) {
    // 600 events: two complete stored subtrees of 256 and a partial third.
    let log = open(&database).await;
    fill(&log, 257).await;
    let early = verified(&log, &log.checkpoint().await.unwrap());
    fill_more(&log, 257, 600).await;
    let late = verified(&log, &log.checkpoint().await.unwrap());
    for sequence in [0, 5, 255, 256] {
        let (_, leaf, proof) = log.inclusion_proof(sequence, 257).await.unwrap();
        warden_merkle::verify_inclusion(sequence, 257, &leaf, &proof, &early.root).unwrap();
    }
    for sequence in [0, 300, 511, 512, 599] {
        let (_, leaf, proof) = log.inclusion_proof(sequence, 600).await.unwrap();
        warden_merkle::verify_inclusion(sequence, 600, &leaf, &proof, &late.root).unwrap();
    }
    for old in [1, 256, 257] {
        let old_root = log.root(old).await.unwrap();
        let (_, proof) = log.consistency_proof(old, 600).await.unwrap();
        warden_merkle::verify_consistency(old, 600, &old_root, &late.root, &proof).unwrap();
    }
    assert_eq!(log.root(257).await.unwrap(), early.root);
    // A log reopened mid-subtree rebuilds its right edge and carries on.
    let reopened = open(&database).await;
    fill_more(&reopened, 600, 800).await;
    let report = reopened.verify(0, 0).await.unwrap();
    assert!(report.ok && report.verified == 800, "{report:?}");
    let head = verified(&reopened, &reopened.checkpoint().await.unwrap());
    let (_, proof) = reopened.consistency_proof(600, 800).await.unwrap();
    warden_merkle::verify_consistency(600, 800, &late.root, &head.root, &proof).unwrap();
}

async fn fill_more(log: &AuditLog, from: usize, to: usize) {
    let events: Vec<EventInput> = (from..to).map(|i| event(&format!("e{i}"), "more")).collect();
    log.append(events).await.unwrap();
}

async fn exec(database: &Database, sql: &str) -> Result<(), warden_store::StoreError> {
    match database {
        Database::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        Database::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
    }
    .map_err(Into::into)
}

async fn the_database_refuses_updates_and_deletes(database: Database) {
    let log = open(&database).await;
    // 256 events complete the first stored tree node.
    fill(&log, 256).await;
    log.checkpoint().await.unwrap();
    for sql in [
        "UPDATE audit_events SET agent_id = 'mallory' WHERE sequence = 1",
        "DELETE FROM audit_events WHERE sequence = 1",
        "UPDATE audit_tree_nodes SET hash = hash WHERE level = 8",
        "DELETE FROM audit_tree_nodes",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_payloads SET payload = '{}'",
    ] {
        let error = exec(&database, sql).await.expect_err(sql);
        assert!(matches!(error, warden_store::StoreError::Refused(_)), "{sql}: {error:?}");
    }
    if let Database::Postgres(_) = &database {
        assert!(exec(&database, "TRUNCATE audit_events").await.is_err());
    }
    assert!(log.verify(0, 0).await.unwrap().ok);
}

/// What an attacker with database access does first.
async fn drop_triggers(database: &Database) {
    let statements: &[&str] = match database {
        Database::Sqlite(_) => &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
            "DROP TRIGGER audit_tree_nodes_no_update",
            "DROP TRIGGER audit_tree_nodes_no_delete",
        ],
        Database::Postgres(_) => &[
            "DROP TRIGGER audit_events_append_only ON audit_events",
            "DROP TRIGGER audit_tree_nodes_append_only ON audit_tree_nodes",
        ],
    };
    for sql in statements {
        exec(database, sql).await.unwrap();
    }
}

async fn check_tampering(database: Database, tamper: &[&str], first_bad: u64, problem: &str) {
    check_tampering_of(database, 12, tamper, first_bad, problem).await;
}

async fn check_tampering_of(database: Database, events: u64, tamper: &[&str], first_bad: u64, problem: &str) {
    let log = open(&database).await;
    fill(&log, events as usize).await;
    let checkpoint = log.checkpoint().await.unwrap();
    let head = verified(&log, &checkpoint);
    assert!(log.verify(0, 0).await.unwrap().ok);
    drop_triggers(&database).await;
    for sql in tamper {
        exec(&database, sql).await.unwrap();
    }
    let report = log.verify(0, 0).await.unwrap();
    assert!(!report.ok, "tampering went unnoticed: {tamper:?}");
    assert_eq!(report.first_bad_sequence, first_bad, "{report:?}");
    assert!(report.problem.contains(problem), "{report:?}");
    // An auditor holding the earlier checkpoint catches it too: for every
    // event the log shows, it hashes the event and checks the hash against
    // the checkpoint; and the shown sequences must run 0.. without gaps.
    let shown = log.records(&Filter::default(), 0, 1000).await.unwrap();
    let mut caught =
        shown.iter().enumerate().any(|(i, r)| r.stored.sequence != i as u64) || (shown.len() as u64) < events;
    for record in &shown {
        let e = &record.stored;
        let leaf = crate::leaf::LeafFields {
            event_id: &e.event_id,
            event_type: &e.event_type,
            time_micros: e.time_micros,
            correlation_id: &e.correlation_id,
            agent_id: &e.agent_id,
            actor: &e.actor,
            subject: &e.subject,
            payload_hash: &e.payload_hash,
            sensitive: e.sensitive.as_deref(),
        }
        .leaf_hash();
        match log.inclusion_proof(e.sequence, events).await {
            Ok((_, _, proof))
                if warden_merkle::verify_inclusion(e.sequence, events, &leaf, &proof, &head.root).is_ok() => {}
            _ => caught = true,
        }
    }
    assert!(caught, "no proof against the earlier checkpoint failed: {tamper:?}");
}

async fn an_edited_event_is_caught(database: Database) {
    check_tampering(database, &["UPDATE audit_events SET agent_id = 'mallory' WHERE sequence = 5"], 5, "leaf hash")
        .await;
}

/// The attacker rewrites event 5 and its leaf hash consistently.
fn rewrite_event_5(database: &Database) -> String {
    let hash = crate::leaf::payload_hash("{\"effect\":\"allow\"}");
    let fields = crate::leaf::LeafFields {
        event_id: "e5",
        event_type: "policy_evaluation",
        time_micros: 1_781_524_800_000_000,
        correlation_id: "corr-agent-2",
        agent_id: "mallory",
        actor: "warden-policy-engine",
        subject: "agent-2",
        payload_hash: &hash,
        sensitive: None,
    };
    let leaf = hex::encode(fields.leaf_hash());
    match database {
        Database::Sqlite(_) => {
            format!("UPDATE audit_events SET agent_id = 'mallory', leaf_hash = X'{leaf}' WHERE sequence = 5")
        }
        Database::Postgres(_) => {
            format!("UPDATE audit_events SET agent_id = 'mallory', leaf_hash = '\\x{leaf}' WHERE sequence = 5")
        }
    }
}

async fn an_edited_event_with_recomputed_hashes_is_caught(database: Database) {
    // Inside a complete stored subtree (256 leaves), the stored node over
    // the first 256 events still holds the original.
    let update = rewrite_event_5(&database);
    check_tampering_of(database, 300, &[&update], 0, "tree node (8, 0) does not match the events under it").await;
}

async fn an_edited_event_with_recomputed_hashes_is_caught_by_the_checkpoint(database: Database) {
    // Before any stored node covers it, the signed checkpoint does.
    let update = rewrite_event_5(&database);
    check_tampering(database, &[&update], 0, "no longer matches signed checkpoint 12").await;
}

async fn a_deleted_event_is_caught(database: Database) {
    check_tampering(database, &["DELETE FROM audit_events WHERE sequence = 7"], 7, "event 7 is missing").await;
}

async fn a_deleted_last_event_is_caught(database: Database) {
    check_tampering(database, &["DELETE FROM audit_events WHERE sequence = 11"], 11, "larger than the log").await;
}

async fn an_inserted_event_is_caught(database: Database) {
    let insert = match &database {
        Database::Sqlite(_) => {
            "INSERT INTO audit_events SELECT 12, 'forged', event_type, time_micros, correlation_id, agent_id, \
             actor, subject, payload_hash, sensitive, leaf_hash, recorded_at_micros, content_hash FROM audit_events \
             WHERE sequence = 3"
        }
        Database::Postgres(_) => {
            "INSERT INTO audit_events SELECT 12, 'forged', event_type, time_micros, correlation_id, agent_id, \
             actor, subject, payload_hash, sensitive, leaf_hash, recorded_at_micros, content_hash FROM audit_events \
             WHERE sequence = 3"
        }
    };
    let payload = "INSERT INTO audit_payloads SELECT 12, payload FROM audit_payloads WHERE sequence = 3";
    check_tampering(database, &[insert, payload], 12, "leaf hash").await;
}

async fn reordered_events_are_caught(database: Database) {
    // Each event still matches its own leaf hash (a leaf commits to the
    // event, its position is the tree's), so the signed tree catches it.
    check_tampering(
        database,
        &[
            "UPDATE audit_events SET sequence = 100 WHERE sequence = 2",
            "UPDATE audit_events SET sequence = 2 WHERE sequence = 3",
            "UPDATE audit_events SET sequence = 3 WHERE sequence = 100",
        ],
        0,
        "no longer matches signed checkpoint 12",
    )
    .await;
}

async fn sensitive_fields_are_encrypted_and_forgettable(database: Database) {
    let log = open(&database).await;
    let mut with_pii = event("pii-1", "agent-9");
    with_pii.subject = "customer-42".into();
    with_pii.sensitive = Some(Struct { fields: [("email".to_string(), text("jane@example.com"))].into() });
    log.append(vec![with_pii, event("plain", "agent-9")]).await.unwrap();
    // At rest the email is ciphertext.
    let raw = log.store().events(&Filter::default(), 0, 10).await.unwrap();
    let sealed = raw[0].sensitive.as_ref().unwrap();
    assert!(!sealed.windows(5).any(|w| w == b"jane@"), "sensitive data stored in clear");
    let records = log.records(&Filter::default(), 0, 10).await.unwrap();
    assert_eq!(records[0].sensitive.as_ref().unwrap().fields["email"], text("jane@example.com"));
    let checkpoint = log.checkpoint().await.unwrap();

    assert!(log.forget("customer-42").await.unwrap());
    assert!(!log.forget("customer-42").await.unwrap());
    let records = log.records(&Filter::default(), 0, 10).await.unwrap();
    assert!(records[0].sensitive.is_none() && records[0].sensitive_forgotten);
    assert!(records[0].payload.is_some(), "only the sensitive fields are lost");
    assert_eq!(records[2].stored.event_type, crate::log::FORGET_EVENT);
    // Every hash still holds, including against the earlier checkpoint.
    assert!(log.verify(0, 0).await.unwrap().ok);
    let head = verified(&log, &checkpoint);
    let (_, leaf, proof) = log.inclusion_proof(0, head.size).await.unwrap();
    warden_merkle::verify_inclusion(0, head.size, &leaf, &proof, &head.root).unwrap();
    // A fresh log on the same database cannot read it either.
    let reopened = open(&database).await;
    assert!(reopened.records(&Filter::default(), 0, 1).await.unwrap()[0].sensitive_forgotten);
}

async fn retention_drops_payloads_and_keeps_proofs(database: Database) {
    let log = open(&database).await;
    fill(&log, 5).await;
    let checkpoint = log.checkpoint().await.unwrap();
    let cutoff = crate::log::now_micros() + 1;
    let (through, deleted) = log.purge_before(cutoff).await.unwrap().unwrap();
    assert_eq!((through, deleted), (4, 5));
    let records = log.records(&Filter::default(), 0, 10).await.unwrap();
    assert!(records[..5].iter().all(|r| r.payload.is_none()));
    assert_eq!(records[5].stored.event_type, crate::log::RETENTION_EVENT);
    let report = log.verify(0, 0).await.unwrap();
    assert!(report.ok, "{report:?}");
    let head = verified(&log, &checkpoint);
    let (_, leaf, proof) = log.inclusion_proof(2, head.size).await.unwrap();
    warden_merkle::verify_inclusion(2, head.size, &leaf, &proof, &head.root).unwrap();
    // A payload deleted beyond the recorded purge is tampering.
    fill_more(&log, 10, 12).await;
    exec(&database, "DELETE FROM audit_payloads WHERE sequence = 7").await.unwrap();
    let report = log.verify(0, 0).await.unwrap();
    assert!(!report.ok && report.first_bad_sequence == 7, "{report:?}");
}

async fn concurrent_appenders_share_one_gap_free_log(database: Database) {
    // Two logs over one database stand in for two replicas.
    let first = open(&database).await;
    let second = open(&database).await;
    let mut tasks = Vec::new();
    for (i, log) in [first.clone(), second.clone()].into_iter().enumerate() {
        for batch in 0..10 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let events: Vec<EventInput> =
                    (0..5).map(|k| event(&format!("r{i}-b{batch}-{k}"), "concurrent")).collect();
                log.append(events).await.unwrap()
            }));
        }
    }
    let mut sequences = Vec::new();
    for task in tasks {
        sequences.extend(task.await.unwrap().into_iter().map(|r| r.sequence));
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (0..100).collect::<Vec<u64>>());
    assert!(first.verify(0, 0).await.unwrap().ok);
    let a = first.checkpoint().await.unwrap();
    let b = second.checkpoint().await.unwrap();
    assert_eq!((a.tree_size, a.root_hash), (b.tree_size, b.root_hash));
}

async fn bad_payloads_are_rejected_whole(database: Database) {
    let log = open(&database).await;
    let mut bad = event("bad", "x");
    bad.payload =
        Some(Struct { fields: [("n".to_string(), Value { kind: Some(Kind::NumberValue(f64::NAN)) })].into() });
    let error = log.append(vec![event("good", "x"), bad]).await.unwrap_err();
    assert!(matches!(error, crate::log::AuditError::Invalid(ref v) if v[0].field == "events[1].payload"), "{error:?}");
    assert_eq!(log.store().size().await.unwrap(), 0, "nothing of a rejected batch is written");
}

/// `groups` Append calls of `size` events each, prepared for the store.
async fn groups_of(log: &AuditLog, prefix: &str, groups: usize, size: usize) -> Vec<Vec<NewEvent>> {
    let mut prepared = Vec::new();
    for g in 0..groups {
        let inputs = (0..size).map(|k| event(&format!("{prefix}-{g}-{k}"), &format!("agent-{}", k % 3))).collect();
        prepared.push(log.prepare(inputs).await.unwrap());
    }
    prepared
}

/// Makes the database refuse to store an event with the id `poison`.
async fn refuse_poison(database: &Database) {
    let statements: &[&str] = match database {
        Database::Sqlite(_) => &["CREATE TRIGGER poison BEFORE INSERT ON audit_events WHEN NEW.event_id = 'poison' \
              BEGIN SELECT RAISE(ABORT, 'poisoned event'); END"],
        Database::Postgres(_) => &[
            "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.event_id = 'poison' THEN \
             RAISE EXCEPTION 'poisoned event'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER poison BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION poison()",
        ],
    };
    for statement in statements {
        exec(database, statement).await.unwrap();
    }
}

async fn a_failing_append_commits_only_the_calls_before_it(database: Database) {
    let log = open(&database).await;
    let store = log.store().clone();
    refuse_poison(&database).await;
    // Four calls of 100 events; the last call holds an event the database
    // refuses. On PostgreSQL the batch is striped over two transactions
    // (calls 0-1 and 2-3) that commit in order; SQLite has one.
    let mut groups = groups_of(&log, "s", 4, 100).await;
    groups[3][50] = log.prepare(vec![event("poison", "x")]).await.unwrap().remove(0);
    let slices: Vec<&[NewEvent]> = groups.iter().map(Vec::as_slice).collect();
    let mut session = AppendSession::default();
    let appended = store.append(&slices, &mut session, crate::log::now_micros(), 2).await;
    assert!(appended.error.is_some(), "the poisoned call fails");
    let committed = match database {
        Database::Postgres(_) => 2,
        Database::Sqlite(_) => 0,
    };
    assert_eq!(appended.receipts.len(), committed, "the calls before the failed transaction are kept");
    for (g, receipts) in appended.receipts.iter().enumerate() {
        let sequences: Vec<u64> = receipts.iter().map(|r| r.sequence).collect();
        assert_eq!(sequences, (g as u64 * 100..(g as u64 + 1) * 100).collect::<Vec<_>>());
    }
    assert_eq!(store.size().await.unwrap(), committed as u64 * 100, "nothing of the failed calls is written");
    assert!(log.verify(0, 0).await.unwrap().ok);

    // The same calls again, once the database takes them: the kept calls
    // are duplicates and the rest continue the log without a gap, whatever
    // the cached frontier said.
    let drop_trigger = match database {
        Database::Sqlite(_) => "DROP TRIGGER poison",
        Database::Postgres(_) => "DROP TRIGGER poison ON audit_events",
    };
    exec(&database, drop_trigger).await.unwrap();
    let appended = store.append(&slices, &mut session, crate::log::now_micros(), 2).await;
    assert!(appended.error.is_none(), "{:?}", appended.error);
    store.release(&mut session).await;
    let receipts: Vec<(u64, bool)> = appended.receipts.iter().flatten().map(|r| (r.sequence, r.duplicate)).collect();
    let expected: Vec<(u64, bool)> = (0..400u64).map(|s| (s, (s as usize) < committed * 100)).collect();
    assert_eq!(receipts, expected);
    let report = log.verify(0, 0).await.unwrap();
    assert!(report.ok && report.verified == 400, "{report:?}");
    let checkpoint = log.checkpoint().await.unwrap();
    assert_eq!(verified(&log, &checkpoint).size, 400);
}

async fn replicas_appending_striped_batches_share_one_gap_free_log(database: Database) {
    // Two stores with their own frontiers stand in for two replicas, each
    // appending striped batches while a third appends small ones.
    let log = open(&database).await;
    let other = open(&database).await;
    let mut batches = Vec::new();
    for replica in 0..2 {
        for round in 0..3 {
            batches.push(groups_of(&log, &format!("r{replica}-{round}"), 3, 100).await);
        }
    }
    let mut tasks = Vec::new();
    for (replica, mine) in batches.chunks(3).map(<[_]>::to_vec).enumerate() {
        let store = AuditStore::new(database.clone());
        tasks.push(tokio::spawn(async move {
            // The first batch takes the append lock and the next ones keep
            // it, as a busy appender does; releasing it lets the others in.
            let mut session = AppendSession::default();
            let mut sequences = Vec::new();
            for groups in mine {
                let slices: Vec<&[NewEvent]> = groups.iter().map(Vec::as_slice).collect();
                let appended = store.append(&slices, &mut session, crate::log::now_micros(), 2).await;
                assert!(appended.error.is_none(), "replica {replica}: {:?}", appended.error);
                sequences.extend(appended.receipts.iter().flatten().map(|r| r.sequence));
            }
            store.release(&mut session).await;
            sequences
        }));
    }
    let small = tokio::spawn(async move {
        let mut sequences = Vec::new();
        for k in 0..20 {
            let receipts = other.append(vec![event(&format!("small-{k}"), "x")]).await.unwrap();
            sequences.push(receipts[0].sequence);
        }
        sequences
    });
    let mut sequences = small.await.unwrap();
    for task in tasks {
        let mine = task.await.unwrap();
        // Each call's events are consecutive.
        for call in mine.chunks(100) {
            assert!(call.windows(2).all(|w| w[1] == w[0] + 1), "{call:?}");
        }
        sequences.extend(mine);
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (0..1820).collect::<Vec<u64>>());
    let report = log.verify(0, 0).await.unwrap();
    assert!(report.ok && report.verified == 1820, "{report:?}");
}

async fn the_append_lock_is_released_when_idle_or_dropped(database: Database) {
    // A busy log's appender keeps the append lock between batches; once
    // idle it lets the other replica in. (A lock kept forever would hang
    // the second replica's append.)
    let busy = open(&database).await;
    let other = open(&database).await;
    let calls: Vec<_> = (0..4)
        .map(|c| {
            let busy = busy.clone();
            tokio::spawn(async move {
                let events = (0..100).map(|k| event(&format!("busy-{c}-{k}"), "x")).collect();
                busy.append(events).await.unwrap()
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(other.append(vec![event("other-1", "y")]).await.unwrap()[0].sequence, 400);

    // A session dropped while holding the lock closes its connections
    // instead of returning the lock to the pool with them.
    let store = AuditStore::new(database.clone());
    let groups = groups_of(&busy, "dropped", 3, 100).await;
    let slices: Vec<&[NewEvent]> = groups.iter().map(Vec::as_slice).collect();
    let mut session = AppendSession::default();
    assert!(store.append(&slices, &mut session, crate::log::now_micros(), 2).await.error.is_none());
    assert!(!store.others_waiting(&mut session).await, "nobody waits yet");
    let waiting = tokio::spawn({
        let other = other.clone();
        async move { other.append(vec![event("other-2", "y")]).await.unwrap()[0].sequence }
    });
    if matches!(database, Database::Postgres(_)) {
        // The holder sees the other replica queue for the lock (a busy
        // appender then lets it in).
        let mut seen = false;
        for _ in 0..5000 {
            if store.others_waiting(&mut session).await {
                seen = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(seen, "the waiting replica shows");
        assert!(!waiting.is_finished(), "it waits while the lock is held");
    }
    drop(session);
    assert_eq!(waiting.await.unwrap(), 701);
    assert!(other.verify(0, 0).await.unwrap().ok);
}

async fn a_batch_staged_behind_another_commits_after_it_or_not_at_all(database: Database) {
    let log = open(&database).await;
    let store = log.store().clone();
    let mut session = AppendSession::default();
    let first = groups_of(&log, "a", 3, 100).await;
    let slices: Vec<&[NewEvent]> = first.iter().map(Vec::as_slice).collect();
    assert!(store.append(&slices, &mut session, crate::log::now_micros(), 2).await.error.is_none());
    if matches!(database, Database::Sqlite(_)) {
        assert!(!store.can_stage(&session), "SQLite appends one transaction at a time");
        return;
    }
    assert!(store.can_stage(&session), "the session holds the lock and knows the log's size");
    let now = crate::log::now_micros();

    // Two batches in flight: the second names an event of the first, and
    // gets the first's receipt for it.
    let b1 = groups_of(&log, "b1", 3, 100).await;
    let mut b2 = groups_of(&log, "b2", 3, 100).await;
    b2[1][7] = b1[2][5].clone();
    let s1: Vec<&[NewEvent]> = b1.iter().map(Vec::as_slice).collect();
    let s2: Vec<&[NewEvent]> = b2.iter().map(Vec::as_slice).collect();
    let staged1 = store.stage(&s1, &mut session, now, 2, Vec::new()).await.unwrap();
    let staged2 = store.stage(&s2, &mut session, now, 2, staged1.fresh_receipts()).await.unwrap();
    assert_eq!(store.size().await.unwrap(), 300, "nothing staged is visible before it commits");
    let r1 = staged1.commit().await;
    let r2 = staged2.commit().await;
    assert!(r1.error.is_none() && r2.error.is_none());
    assert_eq!(r1.receipts[2][5].sequence, 300 + 205);
    assert_eq!((r2.receipts[1][7].sequence, r2.receipts[1][7].duplicate), (505, true));
    let fresh: Vec<u64> = r2.receipts.iter().flatten().filter(|r| !r.duplicate).map(|r| r.sequence).collect();
    assert_eq!(fresh, (600..899).collect::<Vec<u64>>(), "the second batch follows the first without a gap");

    // An id the log already records: staging refuses the batch (the unique
    // index), and an append that reads the log first takes it.
    let mut b3 = groups_of(&log, "b3", 3, 100).await;
    b3[0][0] = first[0][0].clone();
    let s3: Vec<&[NewEvent]> = b3.iter().map(Vec::as_slice).collect();
    assert!(store.stage(&s3, &mut session, now, 2, Vec::new()).await.is_err());
    assert!(!store.can_stage(&session), "a failed stage forgets the frontier");
    let r3 = store.append(&s3, &mut session, now, 2).await;
    assert!(r3.error.is_none(), "{:?}", r3.error);
    assert_eq!((r3.receipts[0][0].sequence, r3.receipts[0][0].duplicate), (0, true));
    assert_eq!(r3.receipts[0][1].sequence, 899);

    // The first batch fails at commit (a deferred check): the one staged
    // behind it is abandoned, and appended again it follows the log's end.
    let checks = [
        "CREATE FUNCTION refuse_at_commit() RETURNS trigger AS $$ BEGIN IF NEW.event_id = 'late-poison' THEN \
         RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$ LANGUAGE plpgsql",
        "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON audit_events DEFERRABLE INITIALLY DEFERRED \
         FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()",
    ];
    for check in checks {
        exec(&database, check).await.unwrap();
    }
    let mut b4 = groups_of(&log, "b4", 1, 10).await;
    b4[0][3] = log.prepare(vec![event("late-poison", "x")]).await.unwrap().remove(0);
    let b5 = groups_of(&log, "b5", 1, 10).await;
    let s4: Vec<&[NewEvent]> = b4.iter().map(Vec::as_slice).collect();
    let s5: Vec<&[NewEvent]> = b5.iter().map(Vec::as_slice).collect();
    let staged4 = store.stage(&s4, &mut session, now, 2, Vec::new()).await.unwrap();
    let staged5 = store.stage(&s5, &mut session, now, 2, staged4.fresh_receipts()).await.unwrap();
    let r4 = staged4.commit().await;
    assert!(r4.error.is_some() && r4.receipts.is_empty(), "the failed batch appends nothing");
    staged5.abandon().await;
    session.reset();
    let r5 = store.append(&s5, &mut session, now, 2).await;
    assert!(r5.error.is_none(), "{:?}", r5.error);
    assert_eq!(r5.receipts[0][0].sequence, 1198, "no gap where the failed batch was");
    store.release(&mut session).await;
    let report = log.verify(0, 0).await.unwrap();
    assert!(report.ok && report.verified == 1208, "{report:?}");
}

/// An id names one event: the same content again is a duplicate (a
/// retry), other content under it is refused and nothing of its call is
/// written, whether the first is recorded, in flight in the same batch, or
/// in the same call.
async fn an_id_with_other_content_is_refused_whole(database: Database) {
    let log = open(&database).await;
    log.append(vec![event("a", "x")]).await.unwrap();
    // A retry without a time of its own is still the same event.
    let untimed = |id: &str| EventInput { time_micros: None, ..event(id, "x") };
    log.append(vec![untimed("u")]).await.unwrap();
    assert!(log.append(vec![untimed("u")]).await.unwrap()[0].duplicate);
    let retried = log.append(vec![event("a", "x")]).await.unwrap();
    assert!(retried[0].duplicate);
    for (clash, what) in [
        (EventInput { actor: "support-bot".into(), ..event("a", "x") }, "another principal"),
        (EventInput { event_type: "action_completed".into(), ..event("a", "x") }, "another type"),
        (
            EventInput {
                payload: Some(Struct { fields: [("effect".to_string(), text("deny"))].into() }),
                ..event("a", "x")
            },
            "another payload",
        ),
    ] {
        let refused = log.append(vec![event("fresh", "x"), clash]).await.unwrap_err();
        assert_eq!(warden_errors::Classify::code(&refused), tonic::Code::AlreadyExists, "{what}: {refused}");
        assert!(refused.to_string().contains("event a is recorded with other content"), "{refused}");
    }
    // Two contents for one id within one call: refused too.
    let twice = log.append(vec![event("b", "x"), EventInput { actor: "other".into(), ..event("b", "x") }]).await;
    assert!(twice.is_err());
    // Nothing of the refused calls was written; concurrent calls with
    // other ids are not affected.
    let (good, bad) = tokio::join!(
        log.append(vec![event("c", "x")]),
        log.append(vec![EventInput { actor: "intruder".into(), ..event("a", "x") }])
    );
    assert!(good.is_ok() && bad.is_err());
    let ids: Vec<String> =
        log.records(&Filter::default(), 0, 100).await.unwrap().into_iter().map(|r| r.stored.event_id).collect();
    assert_eq!(ids, ["a", "u", "c"]);
    assert!(log.verify(0, 0).await.unwrap().ok);
}

warden_store::backend_tests!(
    an_id_with_other_content_is_refused_whole,
    appends_are_durable_ordered_and_idempotent,
    proofs_check_against_signed_checkpoints,
    the_database_refuses_updates_and_deletes,
    an_edited_event_is_caught,
    an_edited_event_with_recomputed_hashes_is_caught,
    an_edited_event_with_recomputed_hashes_is_caught_by_the_checkpoint,
    proofs_span_stored_and_recomputed_levels,
    a_deleted_event_is_caught,
    a_deleted_last_event_is_caught,
    an_inserted_event_is_caught,
    reordered_events_are_caught,
    sensitive_fields_are_encrypted_and_forgettable,
    retention_drops_payloads_and_keeps_proofs,
    concurrent_appenders_share_one_gap_free_log,
    bad_payloads_are_rejected_whole,
    a_failing_append_commits_only_the_calls_before_it,
    replicas_appending_striped_batches_share_one_gap_free_log,
    the_append_lock_is_released_when_idle_or_dropped,
    a_batch_staged_behind_another_commits_after_it_or_not_at_all,
);
