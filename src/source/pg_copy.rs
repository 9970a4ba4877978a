//! PostgreSQL extraction through `COPY (SELECT …) TO STDOUT (FORMAT binary)`: the same values,
//! in the same binary send format, as a query's binary result rows, without the per-row
//! result machinery (sqlx's `DataRow` with its offsets vector, and a type check and type
//! clone per value). Profiling a 1M-row, 25-column extraction put that machinery at a fifth
//! of the client's time; `COPY … binary` is also what `bench/compare.sh` measures as the
//! physical floor.
//!
//! The stream format is PostgreSQL's own ("Binary Format",
//! <https://www.postgresql.org/docs/current/sql-copy.html>): an 11-byte signature, a 32-bit
//! flags word, a 32-bit header-extension length and that many bytes; then per tuple a 16-bit
//! field count and per field a 32-bit length (-1 for NULL) and the value; then the 16-bit
//! trailer -1. The server sends a tuple per `CopyData` message, but the parser does not rely
//! on it: a tuple split across messages is carried over.
//!
//! COPY takes no bound parameters, and the cursor value is never spliced into SQL, so a read
//! with a cursor bound goes through the query path instead (see `Reader::extract`).
//!
//! A COPY that is not read to the end leaves its connection streaming the rest of the table;
//! [`Guarded`] closes such a connection instead of returning it to the pool.

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use sqlx::Postgres;
use tokio::sync::mpsc::Sender;

use super::guarded::Guarded;
use super::{ExtractStats, SourceError, postgres};
use crate::schema::{Codec, ColumnMapping, RawEncoding, RawRow, RowSink, Val};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Reads through COPY on `connection`.
impl Guarded<Postgres> {
    /// Runs `COPY (<select>) TO STDOUT (FORMAT binary)`, pushes its rows into `sink` and the
    /// sink's chunks into `out`, as [`super::drive`] does for query rows.
    pub(super) async fn copy_extract<S: RowSink>(
        &mut self,
        select: &str,
        columns: &[ColumnMapping],
        mut sink: S,
        out: Sender<Bytes>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<ExtractStats, SourceError> {
        let statement = format!("COPY ({select}) TO STDOUT (FORMAT binary)");
        let failed = |error: sqlx::Error| SourceError::query("reading rows", error);
        self.reading = true;
        let mut stream = self
            .connection()
            .copy_out_raw(&statement)
            .await
            .map_err(failed)?;
        let codecs: Vec<Codec> = columns.iter().map(|column| column.codec.clone()).collect();
        let mut parser = Parser::new(columns.len());
        while let Some(message) = stream.next().await {
            let message = message.map_err(failed)?;
            let mut full = Vec::new();
            parser.feed(message, |data, fields| {
                let raw = RawRow {
                    encoding: RawEncoding::PostgresBinary,
                    data,
                    fields,
                };
                sink.push_raw(raw, |index| match raw.field(index) {
                    None => Ok(Val::Null),
                    Some(bytes) => postgres::decode_binary(bytes, &codecs[index]),
                })
                .map_err(SourceError::TooManyBadValues)?;
                full.extend(sink.full_chunk());
                Ok(())
            })?;
            let rows = sink.stats().rows;
            for chunk in full {
                super::send(&out, chunk, rows, progress).await?;
            }
        }
        drop(stream);
        // The stream ends after CopyDone, CommandComplete and ReadyForQuery: the connection
        // is usable again.
        self.reading = false;
        parser.finish()?;
        super::finish(sink, &out, progress).await
    }
}

/// One field of a tuple: its byte range in the tuple's data, `None` for NULL.
type Field = Option<(usize, usize)>;

fn protocol(message: impl Into<String>) -> SourceError {
    SourceError::Invalid(format!(
        "PostgreSQL's COPY binary stream: {}",
        message.into()
    ))
}

/// Where the parser is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Tuples,
    Ended,
}

/// The COPY binary stream's parser: whole tuples are handed over as they complete.
struct Parser {
    width: usize,
    state: State,
    /// The start of a tuple (or of the header) that the last message did not complete.
    carry: BytesMut,
    fields: Vec<Field>,
}

/// What parsing one tuple found.
enum Parsed {
    /// A tuple of this many bytes; its fields are in `Parser::fields`.
    Tuple(usize),
    /// The trailer, of two bytes.
    Trailer,
    /// More bytes are needed.
    Incomplete,
}

impl Parser {
    fn new(width: usize) -> Self {
        Self {
            width,
            state: State::Header,
            carry: BytesMut::new(),
            fields: Vec::with_capacity(width),
        }
    }

    /// Parses `message`, calling `row(data, fields)` for every complete tuple, where `fields`
    /// are byte ranges of `data`.
    fn feed(
        &mut self,
        message: Bytes,
        mut row: impl FnMut(&[u8], &[Field]) -> Result<(), SourceError>,
    ) -> Result<(), SourceError> {
        if self.carry.is_empty() {
            let used = self.parse(&message, &mut row)?;
            if used < message.len() {
                self.carry.extend_from_slice(&message[used..]);
            }
        } else {
            self.carry.extend_from_slice(&message);
            let data = std::mem::take(&mut self.carry);
            let used = self.parse(&data, &mut row)?;
            self.carry = data;
            self.carry.advance(used);
        }
        Ok(())
    }

    /// Parses what it can of `data`; returns how many bytes it used.
    fn parse(
        &mut self,
        data: &[u8],
        row: &mut impl FnMut(&[u8], &[Field]) -> Result<(), SourceError>,
    ) -> Result<usize, SourceError> {
        let mut at = 0;
        if self.state == State::Header {
            match header_len(data)? {
                Some(len) => {
                    at = len;
                    self.state = State::Tuples;
                }
                None => return Ok(0),
            }
        }
        while self.state == State::Tuples {
            let rest = &data[at..];
            match self.tuple(rest)? {
                Parsed::Tuple(len) => {
                    row(&rest[..len], &self.fields)?;
                    at += len;
                }
                Parsed::Trailer => {
                    at += 2;
                    self.state = State::Ended;
                }
                Parsed::Incomplete => break,
            }
        }
        if self.state == State::Ended && at < data.len() {
            return Err(protocol("bytes after the trailer"));
        }
        Ok(at)
    }

    /// One tuple at the start of `data`.
    fn tuple(&mut self, data: &[u8]) -> Result<Parsed, SourceError> {
        let Some(count) = data.get(..2) else {
            return Ok(Parsed::Incomplete);
        };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            return Ok(Parsed::Trailer);
        }
        if usize::try_from(count).ok() != Some(self.width) {
            return Err(protocol(format!(
                "a tuple of {count} fields where {} were selected",
                self.width
            )));
        }
        self.fields.clear();
        let mut at = 2;
        for _ in 0..self.width {
            let Some(len) = data.get(at..at + 4) else {
                return Ok(Parsed::Incomplete);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if len == -1 {
                self.fields.push(None);
                continue;
            }
            let len =
                usize::try_from(len).map_err(|_| protocol(format!("a field of length {len}")))?;
            if data.len() < at + len {
                return Ok(Parsed::Incomplete);
            }
            self.fields.push(Some((at, at + len)));
            at += len;
        }
        Ok(Parsed::Tuple(at))
    }

    /// Checks the stream ended with its trailer.
    fn finish(&self) -> Result<(), SourceError> {
        match self.state {
            State::Ended if self.carry.is_empty() => Ok(()),
            _ => Err(protocol("the stream ended before its trailer")),
        }
    }
}

/// The header's length, once `data` holds all of it.
fn header_len(data: &[u8]) -> Result<Option<usize>, SourceError> {
    if data.len() < SIGNATURE.len() + 8 {
        return if SIGNATURE.starts_with(&data[..data.len().min(SIGNATURE.len())]) {
            Ok(None)
        } else {
            Err(protocol("no PGCOPY signature"))
        };
    }
    if &data[..SIGNATURE.len()] != SIGNATURE {
        return Err(protocol("no PGCOPY signature"));
    }
    let word = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    let flags = word(11);
    // Bit 16 says OIDs are included (never asked for); bits 0-15 are reserved and "a reader
    // should abort if an unexpected bit is found in this range".
    if flags & 0x0001_ffff != 0 {
        return Err(protocol(format!("unexpected header flags {flags:#x}")));
    }
    let extension = word(15) as usize;
    let len = SIGNATURE.len() + 8 + extension;
    Ok((data.len() >= len).then_some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out
    }

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = (fields.len() as i16).to_be_bytes().to_vec();
        for field in fields {
            match field {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(bytes) => {
                    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                    out.extend_from_slice(bytes);
                }
            }
        }
        out
    }

    /// Every tuple of `messages`, each field as bytes.
    fn parse_all(width: usize, messages: &[&[u8]]) -> Result<Vec<Vec<Option<Vec<u8>>>>, String> {
        let mut parser = Parser::new(width);
        let mut rows = Vec::new();
        for message in messages {
            parser
                .feed(Bytes::copy_from_slice(message), |data, fields| {
                    rows.push(
                        fields
                            .iter()
                            .map(|field| field.map(|(start, end)| data[start..end].to_vec()))
                            .collect(),
                    );
                    Ok(())
                })
                .map_err(|error| error.to_string())?;
        }
        parser.finish().map_err(|error| error.to_string())?;
        Ok(rows)
    }

    fn stream() -> Vec<u8> {
        let mut all = header();
        all.extend(tuple(&[Some(b"ab"), None]));
        all.extend(tuple(&[Some(b""), Some(&[1, 2, 3])]));
        all.extend((-1i16).to_be_bytes());
        all
    }

    #[test]
    fn tuples_in_one_message_or_split_at_every_byte() {
        let all = stream();
        let expected = vec![
            vec![Some(b"ab".to_vec()), None],
            vec![Some(Vec::new()), Some(vec![1, 2, 3])],
        ];
        assert_eq!(parse_all(2, &[&all]).unwrap(), expected);
        // Every split point, and one byte per message.
        for cut in 0..all.len() {
            let (head, tail) = all.split_at(cut);
            assert_eq!(
                parse_all(2, &[head, tail]).unwrap(),
                expected,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(parse_all(2, &bytes).unwrap(), expected);
    }

    #[test]
    fn a_header_extension_is_skipped() {
        let mut all = SIGNATURE.to_vec();
        all.extend_from_slice(&0u32.to_be_bytes());
        all.extend_from_slice(&3u32.to_be_bytes());
        all.extend_from_slice(b"xyz");
        all.extend(tuple(&[Some(b"v")]));
        all.extend((-1i16).to_be_bytes());
        assert_eq!(
            parse_all(1, &[&all]).unwrap(),
            vec![vec![Some(b"v".to_vec())]]
        );
    }

    #[test]
    fn a_broken_stream_is_an_error_not_rows() {
        let all = stream();
        // Cut before the trailer: the stream ended early.
        let error = parse_all(2, &[&all[..all.len() - 2]]).unwrap_err();
        assert!(error.contains("ended before its trailer"), "{error}");
        // Another width than selected.
        let error = parse_all(3, &[&all]).unwrap_err();
        assert!(error.contains("2 fields where 3"), "{error}");
        // No signature.
        let error = parse_all(2, &[b"COPY-ish bytes here......"]).unwrap_err();
        assert!(error.contains("signature"), "{error}");
        // OIDs (flag bit 16) were never asked for.
        let mut oids = header();
        oids[11..15].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        let error = parse_all(2, &[&oids]).unwrap_err();
        assert!(error.contains("flags"), "{error}");
        // A negative length other than -1.
        let mut bad = header();
        bad.extend(1i16.to_be_bytes());
        bad.extend((-5i32).to_be_bytes());
        let error = parse_all(1, &[&bad]).unwrap_err();
        assert!(error.contains("length -5"), "{error}");
        // Bytes after the trailer.
        let mut after = all.clone();
        after.push(0);
        let error = parse_all(2, &[&after]).unwrap_err();
        assert!(error.contains("after the trailer"), "{error}");
    }
}
