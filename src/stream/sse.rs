//! Server-Sent Events framing over raw bytes, following the WHATWG "event stream interpretation"
//! rules, built to keep docs/architecture.md#invariant-7 (bad input is contained) at the first byte
//! we read.
//!
//! [`SseFramer`] is a pure push parser: feed it the body chunks as they arrive with
//! [`SseFramer::push`], collect the [`SseFrame`]s it completes, and call [`SseFramer::finish`] at
//! the end of the body. It does no I/O, never panics on any input, and never fails: bytes it cannot
//! make sense of are skipped by the rules of the format, and an event larger than the configured
//! bound is reported as [`SseFrame::Oversized`] (with its id, so it can be dead-lettered) instead of
//! being buffered. Framing always resumes at the next blank line, so one bad event can never stall
//! the stream.
//!
//! Rules implemented (WHATWG HTML, "Parsing an event stream"):
//! - lines end with LF, CR or CRLF, including a CR at the end of one chunk and its LF at the start
//!   of the next; a line may be split across any number of chunks;
//! - one UTF-8 byte order mark at the very start of the stream is skipped;
//! - a line starting with `:` is a comment; a line without `:` is a field name with an empty value;
//!   one space after the `:` is stripped;
//! - `data` lines are joined with `\n`; `event` sets the name; `id` sets the id unless it contains
//!   NUL; `retry` with only ASCII digits is recorded ([`SseFramer::retry_ms`]); other fields are
//!   ignored;
//! - a blank line dispatches the event; an event without any `data` line is not dispatched;
//! - an event still incomplete at the end of the body is discarded, never dispatched half-read.
//!
//! One deliberate difference: WHATWG keeps the "last event ID" across events, so an event without
//! an `id:` line inherits the previous one. Here [`SseEvent::id`] is the event's *own* id, as
//! OpenCTI's Python client reads it (`connected` and `error` have none and must not look as if they
//! carried the previous event's position).
//!
//! Why not `reqwest-eventsource`: its parser turns invalid UTF-8 into a terminal stream error, so
//! reconnecting from the cursor would meet the same bytes forever (a stall); its data is a
//! `String` (copies); and its retry logic cannot resume from our durable position.
//!
//! Cost: one `memchr2` scan per line; a single-line `data:` value that lies inside one chunk is a
//! zero-copy slice of that chunk; only lines split across chunks and multi-line data are copied.

use bytes::{BufMut, Bytes, BytesMut};

/// The UTF-8 byte order mark, skipped once at the start of a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One complete unit the framer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseFrame {
    /// A dispatched event.
    Event(SseEvent),
    /// An event whose lines added up to more than the configured bound: its data was dropped
    /// without being buffered. `id` and `event` are those seen in the event (lines after the
    /// oversized one are still read), so the caller can dead-letter it by id.
    Oversized(OversizedEvent),
}

/// A dispatched SSE event. Field values are raw bytes: the framer does not decode UTF-8, so a
/// non-UTF-8 payload reaches the caller intact (to be dead-lettered) instead of breaking the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The value of this event's own `id:` line, if it had one.
    pub id: Option<Bytes>,
    /// The value of the `event:` line; `None` means the default name `message`.
    pub event: Option<Bytes>,
    /// The `data:` lines joined with `\n` (no trailing `\n`).
    pub data: Bytes,
}

impl SseEvent {
    /// The event name, `message` when the event had no `event:` line (or an empty one).
    pub fn name(&self) -> &[u8] {
        match &self.event {
            Some(name) if !name.is_empty() => name,
            _ => b"message",
        }
    }
}

/// An event that exceeded the size bound (see [`SseFrame::Oversized`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OversizedEvent {
    /// The event's own id, if an `id:` line was seen.
    pub id: Option<Bytes>,
    /// The event name, if an `event:` line was seen.
    pub event: Option<Bytes>,
    /// How many bytes the event's lines held (line terminators not counted), at least the bound.
    pub bytes: u64,
}

/// The data of the event being assembled: kept as a slice of the input while it is one line.
#[derive(Debug, Default)]
enum DataBuffer {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

/// Incremental SSE parser. See the module documentation for the rules and guarantees.
#[derive(Debug)]
pub struct SseFramer {
    max_event_bytes: usize,
    /// Bytes of the current line received so far, when it started in an earlier chunk.
    partial_line: BytesMut,
    /// The current line is longer than the bound: its remaining bytes are discarded.
    skipping_line: bool,
    /// The previous chunk ended with CR: a LF starting the next chunk ends nothing.
    skip_leading_lf: bool,
    /// How many bytes of the BOM were matched at the start of the stream; `None` once decided.
    bom_matched: Option<usize>,
    data: DataBuffer,
    event: Option<Bytes>,
    id: Option<Bytes>,
    /// Bytes of lines in the current event so far (terminators excluded), for reporting.
    event_bytes: u64,
    oversized: bool,
    retry_ms: Option<u64>,
}

impl SseFramer {
    /// A framer that reports as [`SseFrame::Oversized`], instead of buffering it, any event whose
    /// joined data or any single line is longer than `max_event_bytes`. Memory held is bounded by
    /// a small multiple of that size (one partial line, the data, an id and a name).
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes: max_event_bytes.max(1),
            partial_line: BytesMut::new(),
            skipping_line: false,
            skip_leading_lf: false,
            bom_matched: Some(0),
            data: DataBuffer::Empty,
            event: None,
            id: None,
            event_bytes: 0,
            oversized: false,
            retry_ms: None,
        }
    }

    /// The last valid `retry:` value seen, in milliseconds (OpenCTI never sends one; recorded only).
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Feeds one chunk of the body and appends every frame it completes to `out`, in order.
    ///
    /// Frames complete within `chunk` are slices of it; what the framer keeps of an event that
    /// continues in the next chunk is copied, so that once the caller dropped the frames nothing
    /// refers to `chunk` any more and the HTTP client can reuse its read buffer (instead of
    /// allocating a fresh one for every chunk).
    pub fn push(&mut self, chunk: Bytes, out: &mut Vec<SseFrame>) {
        self.push_lines(&chunk, out);
        self.release_chunk(&chunk);
    }

    /// Replaces the slices of `chunk` held by the unfinished event with copies (at most one
    /// event's fields: a few KB per chunk).
    fn release_chunk(&mut self, chunk: &Bytes) {
        let range = chunk.as_ptr_range();
        let copy = |field: &mut Bytes| {
            if range.contains(&field.as_ptr()) {
                *field = Bytes::copy_from_slice(field);
            }
        };
        if let DataBuffer::One(data) = &mut self.data {
            copy(data);
        }
        for field in [&mut self.id, &mut self.event].into_iter().flatten() {
            copy(field);
        }
    }

    fn push_lines(&mut self, chunk: &Bytes, out: &mut Vec<SseFrame>) {
        let mut pos = self.skip_bom(chunk);
        if pos < chunk.len() && self.skip_leading_lf {
            self.skip_leading_lf = false;
            if chunk[pos] == b'\n' {
                pos += 1;
            }
        }
        while pos < chunk.len() {
            let Some(offset) = memchr::memchr2(b'\n', b'\r', &chunk[pos..]) else {
                self.append_partial(&chunk[pos..]);
                return;
            };
            let end = pos + offset;
            let terminator = chunk[end];
            if self.skipping_line {
                self.skipping_line = false;
                self.event_bytes = self.event_bytes.saturating_add(offset as u64);
            } else if self.partial_line.is_empty() {
                self.process_line(chunk.slice(pos..end), out);
            } else {
                self.append_partial(&chunk[pos..end]);
                if self.skipping_line {
                    // The tail pushed the line over the bound: it is dropped, nothing to process.
                    self.skipping_line = false;
                } else {
                    let line = self.partial_line.split().freeze();
                    self.process_line(line, out);
                }
            }
            pos = end + 1;
            if terminator == b'\r' {
                if pos < chunk.len() {
                    if chunk[pos] == b'\n' {
                        pos += 1;
                    }
                } else {
                    self.skip_leading_lf = true;
                }
            }
        }
    }

    /// Convenience for tests and fuzzing: feeds a borrowed chunk (copied once) and returns the
    /// frames it completes.
    pub fn push_slice(&mut self, chunk: &[u8]) -> Vec<SseFrame> {
        let mut out = Vec::new();
        self.push(Bytes::copy_from_slice(chunk), &mut out);
        out
    }

    /// Ends the stream: an event that was not terminated by a blank line is discarded (never
    /// dispatched half-read), and the framer is reset for a new stream. Returns how many bytes of
    /// incomplete event were discarded.
    pub fn finish(&mut self) -> u64 {
        let discarded = self
            .event_bytes
            .saturating_add(self.partial_line.len() as u64);
        let max_event_bytes = self.max_event_bytes;
        *self = Self::new(max_event_bytes);
        discarded
    }

    /// Skips the BOM at the very start of the stream; returns where the content starts in `chunk`.
    fn skip_bom(&mut self, chunk: &[u8]) -> usize {
        let Some(mut matched) = self.bom_matched else {
            return 0;
        };
        let mut pos = 0;
        while matched < BOM.len() && pos < chunk.len() {
            if chunk[pos] != BOM[matched] {
                // Not a BOM: the bytes matched so far were content.
                self.bom_matched = None;
                self.append_partial(&BOM[..matched]);
                return pos;
            }
            matched += 1;
            pos += 1;
        }
        self.bom_matched = if matched == BOM.len() {
            None
        } else {
            Some(matched)
        };
        pos
    }

    /// Keeps bytes of a line that is not finished yet, unless that makes it exceed the bound.
    fn append_partial(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.skipping_line {
            self.event_bytes = self.event_bytes.saturating_add(bytes.len() as u64);
            return;
        }
        if self.partial_line.len().saturating_add(bytes.len()) > self.max_event_bytes {
            let is_comment = self.partial_line.first().or(bytes.first()) == Some(&b':');
            self.event_bytes = self
                .event_bytes
                .saturating_add((self.partial_line.len() + bytes.len()) as u64);
            self.partial_line = BytesMut::new();
            self.skipping_line = true;
            // A long comment is dropped like any comment; any other long line spoils the event.
            if !is_comment {
                self.mark_oversized();
            }
            return;
        }
        self.partial_line.extend_from_slice(bytes);
    }

    fn mark_oversized(&mut self) {
        self.oversized = true;
        self.data = DataBuffer::Empty;
    }

    fn process_line(&mut self, line: Bytes, out: &mut Vec<SseFrame>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        self.event_bytes = self.event_bytes.saturating_add(line.len() as u64);
        if line[0] == b':' {
            return;
        }
        if line.len() > self.max_event_bytes {
            // Arrived whole in one chunk but still over the bound (a partial line is caught
            // earlier, in `append_partial`).
            self.mark_oversized();
            return;
        }
        let (name, value) = match memchr::memchr(b':', &line) {
            Some(colon) => {
                let start = if line.get(colon + 1) == Some(&b' ') {
                    colon + 2
                } else {
                    colon + 1
                };
                (&line[..colon], line.slice(start..))
            }
            None => (&line[..], Bytes::new()),
        };
        match name {
            b"data" => self.append_data(value),
            b"event" => self.event = Some(value),
            b"id" if memchr::memchr(0, &value).is_none() => self.id = Some(value),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry_ms = Some(value.iter().fold(0u64, |acc, digit| {
                    acc.saturating_mul(10)
                        .saturating_add(u64::from(digit - b'0'))
                }));
            }
            _ => {}
        }
    }

    fn append_data(&mut self, value: Bytes) {
        if self.oversized {
            return;
        }
        let joined_len = match &self.data {
            DataBuffer::Empty => value.len(),
            DataBuffer::One(data) => data.len() + 1 + value.len(),
            DataBuffer::Many(data) => data.len() + 1 + value.len(),
        };
        if joined_len > self.max_event_bytes {
            self.mark_oversized();
            return;
        }
        self.data = match std::mem::take(&mut self.data) {
            DataBuffer::Empty => DataBuffer::One(value),
            DataBuffer::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + 1 + value.len());
                joined.extend_from_slice(&first);
                joined.put_u8(b'\n');
                joined.extend_from_slice(&value);
                DataBuffer::Many(joined)
            }
            DataBuffer::Many(mut joined) => {
                joined.put_u8(b'\n');
                joined.extend_from_slice(&value);
                DataBuffer::Many(joined)
            }
        };
    }

    fn dispatch(&mut self, out: &mut Vec<SseFrame>) {
        let id = self.id.take();
        let event = self.event.take();
        let bytes = std::mem::take(&mut self.event_bytes);
        let data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.oversized) {
            out.push(SseFrame::Oversized(OversizedEvent { id, event, bytes }));
            return;
        }
        let data = match data {
            DataBuffer::Empty => return,
            DataBuffer::One(data) => data,
            DataBuffer::Many(data) => data.freeze(),
        };
        out.push(SseFrame::Event(SseEvent { id, event, data }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, name: Option<&str>, data: &str) -> SseFrame {
        SseFrame::Event(SseEvent {
            id: id.map(|id| Bytes::copy_from_slice(id.as_bytes())),
            event: name.map(|name| Bytes::copy_from_slice(name.as_bytes())),
            data: Bytes::copy_from_slice(data.as_bytes()),
        })
    }

    fn frame_all(input: &[u8]) -> Vec<SseFrame> {
        SseFramer::new(1 << 20).push_slice(input)
    }

    #[test]
    fn opencti_framing_with_lf() {
        let frames =
            frame_all(b"id: 1-0\nevent: create\ndata: {\"a\":1}\n\nevent: connected\ndata: {}\n\n");
        assert_eq!(
            frames,
            vec![
                event(Some("1-0"), Some("create"), "{\"a\":1}"),
                event(None, Some("connected"), "{}"),
            ]
        );
    }

    #[test]
    fn cr_and_crlf_line_ends_are_equivalent() {
        let expected = vec![event(Some("7-1"), Some("update"), "x")];
        assert_eq!(frame_all(b"id: 7-1\revent: update\rdata: x\r\r"), expected);
        assert_eq!(
            frame_all(b"id: 7-1\r\nevent: update\r\ndata: x\r\n\r\n"),
            expected
        );
        assert_eq!(
            frame_all(b"id: 7-1\r\nevent: update\rdata: x\n\r\n"),
            expected
        );
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        let mut framer = SseFramer::new(1024);
        assert!(framer.push_slice(b"data: a\r").is_empty());
        assert!(framer.push_slice(b"\n").is_empty());
        assert_eq!(framer.push_slice(b"\r\n"), vec![event(None, None, "a")]);
    }

    #[test]
    fn comments_are_ignored_and_one_space_is_stripped() {
        let frames = frame_all(b": keep-alive\ndata:no space\ndata:  two spaces\nevent\n\n");
        assert_eq!(frames, vec![event(None, Some(""), "no space\n two spaces")]);
        let SseFrame::Event(ev) = &frames[0] else {
            panic!("not an event");
        };
        assert_eq!(ev.name(), b"message");
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        assert!(frame_all(b"id: 1-0\nevent: heartbeat\n\n\n\n").is_empty());
        assert_eq!(frame_all(b"data\n\n"), vec![event(None, None, "")]);
    }

    #[test]
    fn ids_are_per_event_and_nul_ids_are_ignored() {
        let frames = frame_all(b"id: 1-0\ndata: a\n\ndata: b\n\nid: 2\x00\ndata: c\n\n");
        assert_eq!(
            frames,
            vec![
                event(Some("1-0"), None, "a"),
                event(None, None, "b"),
                event(None, None, "c")
            ]
        );
    }

    #[test]
    fn retry_is_recorded_only_when_numeric() {
        let mut framer = SseFramer::new(64);
        framer.push_slice(b"retry: 12x\nretry: 3000\nretry: -1\n");
        assert_eq!(framer.retry_ms(), Some(3000));
    }

    #[test]
    fn bom_is_skipped_only_at_the_start_even_when_split() {
        let mut framer = SseFramer::new(64);
        assert!(framer.push_slice(&BOM[..2]).is_empty());
        let frames = framer.push_slice(&[&BOM[2..], b"data: x\n\n".as_slice()].concat());
        assert_eq!(frames, vec![event(None, None, "x")]);
        // A BOM later in the stream is content, here part of an unknown field name.
        assert!(
            framer
                .push_slice(&[&BOM[..], b"data: y\n\n".as_slice()].concat())
                .is_empty()
        );
    }

    #[test]
    fn incomplete_event_at_end_is_discarded() {
        let mut framer = SseFramer::new(1024);
        assert!(
            framer
                .push_slice(b"id: 5-0\nevent: create\ndata: {\"trunc")
                .is_empty()
        );
        assert!(framer.finish() > 0);
        // The framer is reset: a new stream starts clean.
        assert_eq!(
            framer.push_slice(b"data: z\n\n"),
            vec![event(None, None, "z")]
        );
    }

    #[test]
    fn oversized_event_is_reported_with_its_id_and_framing_resumes() {
        let mut framer = SseFramer::new(16);
        let mut frames = framer.push_slice(b"event: create\ndata: 0123456789");
        frames.extend(framer.push_slice(b"0123456789012345678901234567890123456789"));
        frames.extend(framer.push_slice(b"\nid: 9-0\n\ndata: ok\n\n"));
        assert_eq!(frames.len(), 2);
        let SseFrame::Oversized(big) = &frames[0] else {
            panic!("expected oversized, got {frames:?}");
        };
        assert_eq!(big.id.as_deref(), Some(b"9-0".as_slice()));
        assert_eq!(big.event.as_deref(), Some(b"create".as_slice()));
        assert!(big.bytes >= 16);
        assert_eq!(frames[1], event(None, None, "ok"));
    }

    #[test]
    fn many_data_lines_over_the_bound_are_oversized() {
        let mut framer = SseFramer::new(10);
        let frames =
            framer.push_slice(b"id: 3-0\ndata: 1234\ndata: 5678\ndata: 9012\n\ndata: a\n\n");
        assert!(
            matches!(&frames[0], SseFrame::Oversized(o) if o.id.as_deref() == Some(b"3-0".as_slice()))
        );
        assert_eq!(frames[1], event(None, None, "a"));
    }

    #[test]
    fn an_unfinished_event_keeps_no_slice_of_the_chunk() {
        let chunk = Bytes::from_static(b"id: 1-0\nevent: create\ndata: payload\n");
        let range = chunk.as_ptr_range();
        let mut framer = SseFramer::new(64);
        let mut out = Vec::new();
        framer.push(chunk, &mut out);
        assert!(out.is_empty());
        let DataBuffer::One(data) = &framer.data else {
            panic!("data not kept");
        };
        assert!(
            !range.contains(&data.as_ptr()),
            "data still refers to the chunk"
        );
        for field in [&framer.id, &framer.event].into_iter().flatten() {
            assert!(
                !range.contains(&field.as_ptr()),
                "a field still refers to the chunk"
            );
        }
        framer.push(Bytes::from_static(b"\n"), &mut out);
        assert_eq!(out, vec![event(Some("1-0"), Some("create"), "payload")]);
    }

    #[test]
    fn single_line_data_is_a_slice_of_the_chunk() {
        let chunk = Bytes::from_static(b"data: payload\n\n");
        let mut out = Vec::new();
        SseFramer::new(64).push(chunk.clone(), &mut out);
        let SseFrame::Event(ev) = &out[0] else {
            panic!("not an event");
        };
        let chunk_range = chunk.as_ptr_range();
        assert!(chunk_range.contains(&ev.data.as_ptr()), "data was copied");
    }
}
