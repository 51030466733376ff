//! Record framing of the append-only log: a fixed header with a CRC32C, then the payload,
//! padded so that every record (and so every payload) starts 16-byte aligned, which rkyv's
//! zero-copy access needs. The byte layout and the argument for each crash case are in
//! docs/log-format.md; this file is the only code that knows them.

/// Bytes of a record header.
pub const HEADER_BYTES: usize = 32;
/// Records start at multiples of this.
pub const ALIGN_BYTES: usize = 16;
/// Largest payload one record may carry (far above any request ferrocd accepts).
pub const PAYLOAD_BYTES_MAX: usize = 64 << 20;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// A payload of the layer above (a Raft entry, hard state, ...).
    Data = 1,
    /// Closes a batch: the records since the previous commit were written by one write and
    /// made durable by one fdatasync. Recovery keeps only closed batches. The payload is the
    /// sequence number of the batch's first record (u64 LE), so that recovery can tell a batch's
    /// own commit from the commit of a later batch.
    Commit = 2,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        match v {
            1 => Some(Kind::Data),
            2 => Some(Kind::Commit),
            _ => None,
        }
    }
}

// Header layout, each offset following the one before:
const LEN_AT: usize = 0; //        u32 payload length
const CRC_AT: usize = LEN_AT + 4; // u32 masked CRC32C of bytes [SEQ_AT, HEADER_BYTES + len)
const SEQ_AT: usize = CRC_AT + 4; // u64 record sequence number, +1 per record, never reused
const KIND_AT: usize = SEQ_AT + 8; // u32 Kind
const RESERVED_AT: usize = KIND_AT + 4; // 12 bytes, zero
const _: () = assert!(RESERVED_AT + 12 == HEADER_BYTES);

/// A CRC of all-zero bytes is not zero once masked, so a zeroed (preallocated, never written)
/// region never passes as a record; the mask is LevelDB's.
fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Bytes a record with `payload_len` bytes of payload occupies, padding included.
pub fn record_bytes(payload_len: usize) -> usize {
    (HEADER_BYTES + payload_len).next_multiple_of(ALIGN_BYTES)
}

/// Appends one framed record to `out` (which must be 16-byte aligned in length).
pub fn encode(out: &mut Vec<u8>, seq: u64, kind: Kind, payload: &[u8]) {
    assert!(
        payload.len() <= PAYLOAD_BYTES_MAX,
        "record payload too large"
    );
    assert_eq!(out.len() % ALIGN_BYTES, 0, "records start aligned");
    let start = out.len();
    out.resize(start + record_bytes(payload.len()), 0);
    let rec = &mut out[start..];
    rec[LEN_AT..LEN_AT + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    rec[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_le_bytes());
    rec[KIND_AT..KIND_AT + 4].copy_from_slice(&(kind as u32).to_le_bytes());
    rec[HEADER_BYTES..HEADER_BYTES + payload.len()].copy_from_slice(payload);
    let crc = crc32c::crc32c(&rec[SEQ_AT..HEADER_BYTES + payload.len()]);
    rec[CRC_AT..CRC_AT + 4].copy_from_slice(&mask(crc).to_le_bytes());
}

/// One decoded record, borrowing its payload from the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub kind: Kind,
    pub payload: &'a [u8],
    /// Bytes the record occupies, padding included.
    pub span: usize,
}

/// Why bytes at an offset are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// All zero: the preallocated space after the last record.
    Zero,
    /// Fewer bytes left than the header or the payload says.
    Truncated,
    /// A header field out of range or a checksum mismatch.
    Invalid,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Record<'_>, Bad> {
    decode_as(buf, true)
}

/// Decodes a record already checked (by a scan or a checkpoint's load) without computing its
/// CRC again: replay and restore read every record a second time.
pub fn decode_checked(buf: &[u8]) -> Result<Record<'_>, Bad> {
    decode_as(buf, false)
}

fn decode_as(buf: &[u8], verify: bool) -> Result<Record<'_>, Bad> {
    if buf.len() < HEADER_BYTES {
        return Err(if buf.iter().all(|&b| b == 0) {
            Bad::Zero
        } else {
            Bad::Truncated
        });
    }
    let len = u32_at(buf, LEN_AT) as usize;
    let crc = u32_at(buf, CRC_AT);
    if len == 0 && crc == 0 && buf[..HEADER_BYTES].iter().all(|&b| b == 0) {
        return Err(Bad::Zero);
    }
    if len > PAYLOAD_BYTES_MAX {
        return Err(Bad::Invalid);
    }
    let span = record_bytes(len);
    if buf.len() < HEADER_BYTES + len {
        return Err(Bad::Truncated);
    }
    if verify && mask(crc32c::crc32c(&buf[SEQ_AT..HEADER_BYTES + len])) != crc {
        return Err(Bad::Invalid);
    }
    let kind = Kind::from_u32(u32_at(buf, KIND_AT)).ok_or(Bad::Invalid)?;
    let seq = u64::from_le_bytes(buf[SEQ_AT..SEQ_AT + 8].try_into().expect("8 bytes"));
    Ok(Record {
        seq,
        kind,
        payload: &buf[HEADER_BYTES..HEADER_BYTES + len],
        span: span.min(buf.len()),
    })
}

/// The outcome of scanning a segment's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Offset just past the last closed batch: everything before is intact and durable.
    pub valid_bytes: usize,
    /// (offset, seq) of every data record in closed batches, in order.
    pub records: Vec<(usize, u64)>,
    /// Sequence number the next record must carry.
    pub next_seq: u64,
}

/// Damage that is not a torn tail: a closed batch exists after a bad record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// Offset of the first bad record.
    pub offset: usize,
}

/// Scans records from the start of `buf`, expecting the first to carry `first_seq`.
///
/// Only one batch is ever unsynced (the writer starts a batch's write after the previous
/// batch's fdatasync returned), so damage may only be in the last batch: a bad record followed
/// by nothing but zeros, garbage or an unclosed batch is a torn tail and is cut; a bad record
/// followed by a valid closed batch is corruption of durable data and is reported.
pub fn scan(buf: &[u8], first_seq: u64) -> Result<Scan, Corruption> {
    let mut at = 0;
    let mut seq = first_seq;
    let mut out = Scan {
        valid_bytes: 0,
        records: Vec::new(),
        next_seq: first_seq,
    };
    let mut pending = Vec::new();
    while at < buf.len() {
        match decode(&buf[at..]) {
            Ok(r) if r.seq == seq => {
                match r.kind {
                    Kind::Data => pending.push((at, r.seq)),
                    Kind::Commit => {
                        out.records.append(&mut pending);
                        out.valid_bytes = at + r.span;
                        out.next_seq = r.seq + 1;
                    }
                }
                seq += 1;
                at += r.span;
            }
            Ok(_) | Err(Bad::Truncated) | Err(Bad::Invalid) => {
                return match closed_batch_after(buf, at + ALIGN_BYTES, out.next_seq) {
                    Some(_) => Err(Corruption { offset: at }),
                    None => Ok(out),
                };
            }
            Err(Bad::Zero) => return Ok(out),
        }
    }
    Ok(out)
}

/// Encodes the commit record closing the batch whose first record is `batch_first_seq`.
pub fn encode_commit(out: &mut Vec<u8>, seq: u64, batch_first_seq: u64) {
    encode(out, seq, Kind::Commit, &batch_first_seq.to_le_bytes());
}

/// Offset of a valid commit at or after `from` that closes a batch later than the one starting
/// at `batch_start`, if any; every aligned offset is tried, since lengths past damage are
/// unknown.
fn closed_batch_after(buf: &[u8], from: usize, batch_start: u64) -> Option<usize> {
    let mut at = from.next_multiple_of(ALIGN_BYTES);
    while at + HEADER_BYTES <= buf.len() {
        if let Ok(r) = decode(&buf[at..]) {
            let first = r.payload.try_into().map(u64::from_le_bytes);
            if r.kind == Kind::Commit && first.is_ok_and(|f| f > batch_start) {
                return Some(at);
            }
        }
        at += ALIGN_BYTES;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `batches` batches of `per` data records each, closed by commits; returns the bytes and
    /// the end offset of each batch.
    fn log(batches: usize, per: usize) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut ends = Vec::new();
        let mut seq = 100;
        for b in 0..batches {
            let first = seq;
            for i in 0..per {
                let payload = vec![(b * 31 + i) as u8; 5 + 7 * i];
                encode(&mut out, seq, Kind::Data, &payload);
                seq += 1;
            }
            encode_commit(&mut out, seq, first);
            seq += 1;
            ends.push(out.len());
        }
        (out, ends)
    }

    #[test]
    fn round_trip_and_alignment() {
        let mut out = Vec::new();
        encode(&mut out, 7, Kind::Data, b"hello");
        assert_eq!(out.len(), 48);
        let r = decode(&out).unwrap();
        assert_eq!(
            (r.seq, r.kind, r.payload, r.span),
            (7, Kind::Data, &b"hello"[..], 48)
        );
        assert_eq!(decode(&[0u8; 64]), Err(Bad::Zero));
    }

    #[test]
    fn cut_at_every_byte_keeps_exactly_the_closed_batches() {
        let (full, ends) = log(3, 3);
        for cut in 0..=full.len() {
            // A cut file, and the same cut with the rest zero-filled (preallocated space).
            let mut zeroed = full.clone();
            zeroed[cut..].iter_mut().for_each(|b| *b = 0);
            for buf in [&full[..cut], &zeroed[..]] {
                let s = scan(buf, 100).unwrap_or_else(|c| panic!("cut {cut}: {c:?}"));
                // A batch survives when its bytes up to the end of its commit's payload are
                // intact (the commit's 8 padding bytes carry nothing).
                let intact = |&&e: &&usize| buf.len() >= e - 8 && buf[..e - 8] == full[..e - 8];
                let durable = ends.iter().filter(intact).count();
                let want = ends[..durable].last().map_or(0, |&e| e.min(buf.len()));
                assert_eq!(s.valid_bytes, want, "cut at {cut}");
                assert_eq!(s.records.len(), 3 * durable, "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_flipped_bit_in_the_last_batch_is_a_torn_tail() {
        let (mut buf, ends) = log(3, 2);
        buf[ends[1] + HEADER_BYTES + 1] ^= 0x10;
        let s = scan(&buf, 100).unwrap();
        assert_eq!(s.valid_bytes, ends[1]);
    }

    #[test]
    fn a_flipped_bit_before_a_closed_batch_is_corruption() {
        let (full, ends) = log(3, 2);
        for bit_at in [0, 5, HEADER_BYTES + 2, ends[0] + 9] {
            let mut buf = full.clone();
            buf[bit_at] ^= 0x01;
            let err = scan(&buf, 100).unwrap_err();
            let first_bad = if bit_at < ends[0] {
                // the record holding the flipped byte
                let mut at = 0;
                while at + decode(&full[at..]).unwrap().span <= bit_at {
                    at += decode(&full[at..]).unwrap().span;
                }
                at
            } else {
                ends[0]
            };
            assert_eq!(err.offset, first_bad, "bit at {bit_at}");
        }
    }

    #[test]
    fn a_sequence_gap_is_damage() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, Kind::Data, b"a");
        encode_commit(&mut buf, 2, 1);
        encode(&mut buf, 9, Kind::Data, b"b");
        encode_commit(&mut buf, 10, 9);
        assert!(
            scan(&buf, 1).is_err(),
            "a closed batch after a gap is not a torn tail"
        );
    }
}
