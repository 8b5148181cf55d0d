//! PostgreSQL's binary COPY format: writing rows for an append, reading
//! them back for Verify's range reads.

use super::*;

/// Rows in PostgreSQL's binary COPY format: a header, then per row the
/// field count and each field as a length (-1 for NULL) and its bytes.
pub(super) struct CopyRows {
    buffer: Vec<u8>,
    fields: i16,
}

impl CopyRows {
    pub(super) fn new(fields: i16) -> Self {
        let mut buffer = Vec::with_capacity(64 * 1024);
        buffer.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buffer.extend_from_slice(&0i32.to_be_bytes()); // flags
        buffer.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyRows { buffer, fields }
    }

    pub(super) fn row(&mut self) {
        self.buffer.extend_from_slice(&self.fields.to_be_bytes());
    }

    pub(super) fn int8(&mut self, value: i64) {
        self.buffer.extend_from_slice(&8i32.to_be_bytes());
        self.buffer.extend_from_slice(&value.to_be_bytes());
    }

    pub(super) fn text(&mut self, value: &str) {
        self.bytes(Some(value.as_bytes()));
    }

    pub(super) fn bytes(&mut self, value: Option<&[u8]>) {
        match value {
            Some(value) => {
                self.buffer.extend_from_slice(&(value.len() as i32).to_be_bytes());
                self.buffer.extend_from_slice(value);
            }
            None => self.buffer.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        self.buffer.extend_from_slice(&(-1i16).to_be_bytes());
        self.buffer
    }
}

/// Reads rows in PostgreSQL's binary COPY format (see [`CopyRows`]).
pub(super) struct CopyReader<'a> {
    data: &'a [u8],
}

impl<'a> CopyReader<'a> {
    pub(super) fn new(data: &'a [u8]) -> Result<Self, StoreError> {
        let mut reader = CopyReader { data };
        if reader.take(11)? != b"PGCOPY\n\xff\r\n\0" {
            return Err(malformed());
        }
        reader.take(4)?; // flags
        let extension = reader.int4()?;
        reader.take(usize::try_from(extension).map_err(|_| malformed())?)?;
        Ok(reader)
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.data.len() < n {
            return Err(malformed());
        }
        let (taken, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(taken)
    }

    pub(super) fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], StoreError> {
        bytes.try_into().map_err(|_| malformed())
    }

    pub(super) fn int4(&mut self) -> Result<i32, StoreError> {
        Ok(i32::from_be_bytes(Self::array(self.take(4)?)?))
    }

    /// Starts the next row of `fields` fields; false at the trailer.
    pub(super) fn row(&mut self, fields: i16) -> Result<bool, StoreError> {
        match i16::from_be_bytes(Self::array(self.take(2)?)?) {
            -1 => Ok(false),
            n if n == fields => Ok(true),
            _ => Err(malformed()),
        }
    }

    pub(super) fn field(&mut self) -> Result<Option<&'a [u8]>, StoreError> {
        match self.int4()? {
            -1 => Ok(None),
            n => Ok(Some(self.take(usize::try_from(n).map_err(|_| malformed())?)?)),
        }
    }

    pub(super) fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        self.field()?.ok_or_else(malformed)
    }

    pub(super) fn int8(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_be_bytes(Self::array(self.bytes()?)?))
    }

    pub(super) fn text(&mut self) -> Result<String, StoreError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| malformed())
    }

    pub(super) fn hash(&mut self) -> Result<Hash, StoreError> {
        hash_of(self.bytes()?.to_vec())
    }
}

pub(super) fn malformed() -> StoreError {
    StoreError::Other("malformed COPY data from the database".into())
}

/// The whole output of a `COPY ... TO STDOUT`.
pub(super) async fn copy_out(pool: &sqlx::PgPool, statement: &str) -> Result<Vec<u8>, StoreError> {
    use futures::TryStreamExt;
    use sqlx::postgres::PgPoolCopyExt;
    let mut stream = pool.copy_out_raw(statement).await?;
    let mut data = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

/// Verify's read path on PostgreSQL: [`AuditStore::range`] by binary COPY,
/// the events and the payloads on two connections at once.
pub(super) async fn range_by_copy(
    pool: &sqlx::PgPool,
    from: u64,
    to: u64,
) -> Result<(Vec<StoredEvent>, Vec<(u64, String)>), StoreError> {
    let events = format!(
        "COPY (SELECT sequence, event_id, event_type, time_micros, correlation_id, agent_id, actor, subject, \
         payload_hash, sensitive, leaf_hash, recorded_at_micros FROM audit_events \
         WHERE sequence >= {from} AND sequence < {to} ORDER BY sequence) TO STDOUT (FORMAT binary)"
    );
    let payloads = format!(
        "COPY (SELECT sequence, payload FROM audit_payloads WHERE sequence >= {from} AND sequence < {to} \
         ORDER BY sequence) TO STDOUT (FORMAT binary)"
    );
    let (events, payloads) = tokio::try_join!(copy_out(pool, &events), copy_out(pool, &payloads))?;
    let mut reader = CopyReader::new(&events)?;
    let mut stored = Vec::with_capacity((to - from) as usize);
    while reader.row(12)? {
        stored.push(StoredEvent {
            sequence: reader.int8()? as u64,
            event_id: reader.text()?,
            event_type: reader.text()?,
            time_micros: reader.int8()?,
            correlation_id: reader.text()?,
            agent_id: reader.text()?,
            actor: reader.text()?,
            subject: reader.text()?,
            payload_json: None,
            payload_hash: reader.hash()?,
            sensitive: reader.field()?.map(<[u8]>::to_vec),
            leaf_hash: reader.hash()?,
            recorded_at_micros: reader.int8()?,
        });
    }
    let mut reader = CopyReader::new(&payloads)?;
    let mut texts = Vec::with_capacity((to - from) as usize);
    while reader.row(2)? {
        texts.push((reader.int8()? as u64, reader.text()?));
    }
    Ok((stored, texts))
}
