//! The append statements whose shape differs by backend: PostgreSQL's
//! array parameters and binary COPY, SQLite's multi-row VALUES lists.

use super::*;

/// The two statements whose shape differs by backend: PostgreSQL takes
/// arrays (`ANY`, `UNNEST`), so each statement has one text whatever the
/// batch size and is prepared once; SQLite takes multi-row VALUES lists.
pub(super) trait BatchStatements: Send {
    /// The log's size, and receipts of the ids already recorded.
    fn size_and_recorded(
        &mut self,
        ids: &[&str],
    ) -> impl std::future::Future<Output = Result<(u64, Vec<Receipt>), StoreError>> + Send;
    fn insert_batch(
        &mut self,
        fresh: &[(u64, &NewEvent)],
        nodes: &[(u32, u64, Hash)],
        now_micros: i64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

pub(super) fn receipt_from(
    event_id: String,
    sequence: i64,
    leaf_hash: Vec<u8>,
    content_hash: Option<Vec<u8>>,
) -> Result<Receipt, StoreError> {
    Ok(Receipt {
        event_id,
        sequence: sequence as u64,
        leaf_hash: hash_of(leaf_hash)?,
        duplicate: true,
        content_hash: content_hash.map(hash_of).transpose()?,
        conflict: false,
    })
}

impl BatchStatements for sqlx::Transaction<'_, sqlx::Postgres> {
    async fn size_and_recorded(&mut self, ids: &[&str]) -> Result<(u64, Vec<Receipt>), StoreError> {
        // One round trip: the size on every row, and a row per recorded id
        // (or one row of NULLs when none is).
        let rows = sqlx::query(
            "SELECT s.size, e.event_id, e.sequence, e.leaf_hash, e.content_hash \
             FROM (SELECT COALESCE(MAX(sequence) + 1, 0) AS size FROM audit_events) s \
             LEFT JOIN audit_events e ON e.event_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&mut **self)
        .await?;
        let size = match rows.first() {
            Some(row) => row.try_get::<i64, _>("size")? as u64,
            None => return Err(StoreError::Other("the size query returned no row".into())),
        };
        let mut receipts = Vec::new();
        for row in &rows {
            if let Some(event_id) = row.try_get::<Option<String>, _>("event_id")? {
                receipts.push(receipt_from(
                    event_id,
                    row.try_get("sequence")?,
                    row.try_get("leaf_hash")?,
                    row.try_get("content_hash")?,
                )?);
            }
        }
        Ok((size, receipts))
    }

    async fn insert_batch(
        &mut self,
        fresh: &[(u64, &NewEvent)],
        nodes: &[(u32, u64, Hash)],
        now_micros: i64,
    ) -> Result<(), StoreError> {
        if !fresh.is_empty() {
            // Binary COPY: the cheapest way into PostgreSQL (no statement
            // to plan, no parameter arrays to unpack); it fires the same
            // triggers and checks the same constraints as INSERT.
            let mut events = CopyRows::new(13);
            let mut payloads = CopyRows::new(2);
            for (sequence, event) in fresh {
                events.row();
                events.int8(*sequence as i64);
                events.text(&event.event_id);
                events.text(&event.event_type);
                events.int8(event.time_micros);
                events.text(&event.correlation_id);
                events.text(&event.agent_id);
                events.text(&event.actor);
                events.text(&event.subject);
                events.bytes(Some(&event.payload_hash));
                events.bytes(event.sensitive.as_deref());
                events.bytes(Some(&event.leaf_hash));
                events.int8(now_micros);
                events.bytes(Some(&event.content_hash));
                payloads.row();
                payloads.int8(*sequence as i64);
                payloads.text(&event.payload_json);
            }
            let connection: &mut sqlx::PgConnection = self;
            for (statement, rows) in [
                (
                    "COPY audit_events (sequence, event_id, event_type, time_micros, correlation_id, agent_id, actor, \
                     subject, payload_hash, sensitive, leaf_hash, recorded_at_micros, content_hash) \
                     FROM STDIN (FORMAT binary)",
                    events,
                ),
                ("COPY audit_payloads (sequence, payload) FROM STDIN (FORMAT binary)", payloads),
            ] {
                let mut copy = connection.copy_in_raw(statement).await?;
                copy.send(rows.finish()).await?;
                copy.finish().await?;
            }
        }
        if !nodes.is_empty() {
            sqlx::query("INSERT INTO audit_tree_nodes (level, idx, hash) SELECT * FROM UNNEST($1::int[], $2::bigint[], $3::bytea[])")
                .bind(nodes.iter().map(|(l, _, _)| *l as i32).collect::<Vec<i32>>())
                .bind(nodes.iter().map(|(_, i, _)| *i as i64).collect::<Vec<i64>>())
                .bind(nodes.iter().map(|(_, _, h)| h.to_vec()).collect::<Vec<Vec<u8>>>())
                .execute(&mut **self)
                .await?;
        }
        Ok(())
    }
}

impl BatchStatements for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn size_and_recorded(&mut self, ids: &[&str]) -> Result<(u64, Vec<Receipt>), StoreError> {
        let size = sqlx::query(SIZE).fetch_one(&mut **self).await?.try_get::<i64, _>("size")? as u64;
        let mut receipts = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let text = format!(
                "SELECT event_id, sequence, leaf_hash, content_hash FROM audit_events WHERE event_id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&text);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut **self).await? {
                receipts.push(receipt_from(
                    row.try_get("event_id")?,
                    row.try_get("sequence")?,
                    row.try_get("leaf_hash")?,
                    row.try_get("content_hash")?,
                )?);
            }
        }
        Ok((size, receipts))
    }

    async fn insert_batch(
        &mut self,
        fresh: &[(u64, &NewEvent)],
        nodes: &[(u32, u64, Hash)],
        now_micros: i64,
    ) -> Result<(), StoreError> {
        for chunk in fresh.chunks(CHUNK) {
            let text = format!(
                "INSERT INTO audit_events (sequence, event_id, event_type, time_micros, correlation_id, agent_id, actor, \
                 subject, payload_hash, sensitive, leaf_hash, recorded_at_micros, content_hash) VALUES {}",
                vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&text);
            for (sequence, event) in chunk {
                query = query
                    .bind(*sequence as i64)
                    .bind(&event.event_id)
                    .bind(&event.event_type)
                    .bind(event.time_micros)
                    .bind(&event.correlation_id)
                    .bind(&event.agent_id)
                    .bind(&event.actor)
                    .bind(&event.subject)
                    .bind(event.payload_hash.to_vec())
                    .bind(event.sensitive.clone())
                    .bind(event.leaf_hash.to_vec())
                    .bind(now_micros)
                    .bind(event.content_hash.to_vec());
            }
            query.execute(&mut **self).await?;
            let text = format!(
                "INSERT INTO audit_payloads (sequence, payload) VALUES {}",
                vec!["(?, ?)"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&text);
            for (sequence, event) in chunk {
                query = query.bind(*sequence as i64).bind(&event.payload_json);
            }
            query.execute(&mut **self).await?;
        }
        for chunk in nodes.chunks(CHUNK) {
            let text = format!(
                "INSERT INTO audit_tree_nodes (level, idx, hash) VALUES {}",
                vec!["(?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&text);
            for (level, index, hash) in chunk {
                query = query.bind(*level as i32).bind(*index as i64).bind(hash.to_vec());
            }
            query.execute(&mut **self).await?;
        }
        Ok(())
    }
}
