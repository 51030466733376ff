//! HPACK decoding (RFC 7541) of request header blocks, for `h2srv`.
//!
//! Why our own: the `hpack-patched` crate builds a hash map of Huffman codes for every
//! Huffman-coded string it decodes (measured: 30% of the owner's samples at put c=100,
//! hashing). Here the fields are handed to a callback as slices (of the block, of the
//! table, or of one reused buffer for a Huffman-coded string), so a block of fields already
//! in the dynamic table costs no allocation; Huffman strings are decoded by the
//! `httlib-huffman` crate's flattened tables. The dynamic table never grows past the
//! 4,096 bytes HTTP/2 allows by default (a size update above it is an error).

use std::collections::VecDeque;

/// The static table (RFC 7541, appendix A); index 1 is the first entry.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// An entry's size as HPACK counts it.
fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HpackError(pub &'static str);

/// The decoding side of one connection's HPACK context.
pub(crate) struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    /// The table's size as the client last set it (at most `limit`).
    max: usize,
    /// What we allow (HTTP/2's SETTINGS_HEADER_TABLE_SIZE, which we leave at its default).
    limit: usize,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
    /// The last few short Huffman strings, encoded and decoded: a client sends the same ones
    /// again and again (h2-based clients never index `:path`, so every call brings it as a
    /// Huffman literal), and a comparison is far cheaper than decoding.
    recent: Vec<Entry>,
    recent_next: usize,
}

/// Huffman strings remembered, and the longest one remembered.
const RECENT_STRINGS: usize = 8;
const RECENT_STRING_BYTES: usize = 64;

/// An HPACK integer with an `n`-bit prefix at the start of `b`: (value, bytes used).
pub(crate) fn integer(b: &[u8], n: u32) -> Result<(usize, usize), HpackError> {
    let max = (1usize << n) - 1;
    let first = *b.first().ok_or(HpackError("integer cut short"))?;
    let mut v = first as usize & max;
    if v < max {
        return Ok((v, 1));
    }
    let mut shift = 0u32;
    for (i, &byte) in b.iter().enumerate().skip(1) {
        // Five continuation bytes carry 35 bits: more than any size this decoder accepts.
        if shift > 28 {
            return Err(HpackError("integer too large"));
        }
        v += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(HpackError("integer cut short"))
}

enum Str {
    /// Raw, at this range of the block.
    Raw(usize, usize),
    /// Huffman-decoded into the given buffer (name or value).
    Decoded,
}

impl Decoder {
    pub(crate) fn new(limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: limit,
            limit,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
            recent: Vec::new(),
            recent_next: 0,
        }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            let (n, v) = self.table.pop_back().expect("size counts entries");
            self.size -= entry_size(&n, &v);
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = entry_size(name, value);
        if size > self.max {
            // An entry larger than the table empties it (RFC 7541, 4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - size);
        self.table.push_front((name.into(), value.into()));
        self.size += size;
    }

    /// The entry at `index` (static, then dynamic).
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError("index 0")),
            1..=61 => Ok(STATIC[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(HpackError("index past the table")),
        }
    }

    /// A string literal at the start of `b`: where it is, and the bytes it used.
    fn string(
        &mut self,
        b: &[u8],
        at: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(Str, usize), HpackError> {
        let s = &b[at..];
        let huffman = s.first().ok_or(HpackError("string cut short"))? & 0x80 != 0;
        let (len, used) = integer(s, 7)?;
        let end = used
            .checked_add(len)
            .filter(|&e| e <= s.len())
            .ok_or(HpackError("string cut short"))?;
        if !huffman {
            return Ok((Str::Raw(at + used, at + end), end));
        }
        let encoded = &s[used..end];
        buf.clear();
        if let Some((_, decoded)) = self.recent.iter().find(|(e, _)| &e[..] == encoded) {
            buf.extend_from_slice(decoded);
            return Ok((Str::Decoded, end));
        }
        httlib_huffman::decode(encoded, buf, httlib_huffman::DecoderSpeed::FiveBits)
            .map_err(|_| HpackError("bad Huffman string"))?;
        if encoded.len() <= RECENT_STRING_BYTES {
            let entry = (encoded.into(), buf[..].into());
            if self.recent.len() < RECENT_STRINGS {
                self.recent.push(entry);
            } else {
                self.recent[self.recent_next] = entry;
                self.recent_next = (self.recent_next + 1) % RECENT_STRINGS;
            }
        }
        Ok((Str::Decoded, end))
    }

    /// Decodes a whole header block, handing each field to `field` in order.
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut at = 0;
        let mut fields_seen = false;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                let (index, used) = integer(&block[at..], 7)?;
                let (n, v) = self.get(index)?;
                field(n, v);
                at += used;
                fields_seen = true;
                continue;
            }
            if first & 0xe0 == 0x20 {
                // A table size update: only before the first field (RFC 7541, 4.2).
                if fields_seen {
                    return Err(HpackError("table size update after a field"));
                }
                let (size, used) = integer(&block[at..], 5)?;
                if size > self.limit {
                    return Err(HpackError("table size over the limit"));
                }
                self.max = size;
                self.evict_to(size);
                at += used;
                continue;
            }
            fields_seen = true;
            let (indexing, prefix) = if first & 0x40 != 0 {
                (true, 6)
            } else {
                // Without indexing (0000) or never indexed (0001).
                (false, 4)
            };
            let (index, used) = integer(&block[at..], prefix)?;
            at += used;
            let mut name_buf = std::mem::take(&mut self.name_buf);
            let mut value_buf = std::mem::take(&mut self.value_buf);
            let result = (|| {
                let name: (Str, Option<usize>) = if index == 0 {
                    let (s, used) = self.string(block, at, &mut name_buf)?;
                    at += used;
                    (s, None)
                } else {
                    self.get(index)?;
                    (Str::Decoded, Some(index))
                };
                let (value, used) = self.string(block, at, &mut value_buf)?;
                at += used;
                let value: &[u8] = match value {
                    Str::Raw(a, b) => &block[a..b],
                    Str::Decoded => &value_buf,
                };
                let (name, value) = match name {
                    (Str::Raw(a, b), _) => (&block[a..b], value),
                    (Str::Decoded, None) => (&name_buf[..], value),
                    (Str::Decoded, Some(i)) => {
                        let (n, _) = self.get(i)?;
                        // Copied out: inserting may evict the entry the name came from.
                        name_buf.clear();
                        name_buf.extend_from_slice(n);
                        (&name_buf[..], value)
                    }
                };
                field(name, value);
                if indexing {
                    self.insert(name, value);
                }
                Ok(())
            })();
            self.name_buf = name_buf;
            self.value_buf = value_buf;
            result?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(out)
    }

    /// RFC 7541, C.4: three requests with Huffman coding, sharing one dynamic table.
    #[test]
    fn the_rfc_examples_with_huffman_decode() {
        let hex = |s: &str| -> Vec<u8> {
            let s: String = s.split_whitespace().collect();
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut d = Decoder::new(4096);
        let first = decode_all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
        assert_eq!(
            first,
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(d.size, 57);
        let second = decode_all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(second[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(second[4], ("cache-control".into(), "no-cache".into()));
        assert_eq!(d.size, 110);
        let third = decode_all(
            &mut d,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        )
        .unwrap();
        assert_eq!(third[1], (":scheme".into(), "https".into()));
        assert_eq!(third[2], (":path".into(), "/index.html".into()));
        assert_eq!(third[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.size, 164);
        assert_eq!(d.table.len(), 3);
    }

    /// Entries are evicted oldest first, and a size update above the limit is refused.
    #[test]
    fn the_table_stays_within_its_size() {
        let mut d = Decoder::new(100);
        // Literal with incremental indexing, new name "a", value "x" * 30 (63 bytes).
        let mut block = vec![0x40, 0x01, b'a', 30];
        block.extend(std::iter::repeat_n(b'x', 30));
        decode_all(&mut d, &block).unwrap();
        assert_eq!((d.table.len(), d.size), (1, 63));
        let mut block = vec![0x40, 0x01, b'b', 30];
        block.extend(std::iter::repeat_n(b'y', 30));
        decode_all(&mut d, &block).unwrap();
        assert_eq!(
            (d.table.len(), d.size),
            (1, 63),
            "the older entry was evicted"
        );
        assert_eq!(decode_all(&mut d, &[0xbe]).unwrap()[0].0, "b");
        // A size update above 100: refused; to 0: the table empties.
        assert!(decode_all(&mut d, &[0x3f, 0x46]).is_err());
        decode_all(&mut d, &[0x20]).unwrap();
        assert_eq!((d.table.len(), d.size), (0, 0));
        assert!(
            decode_all(&mut d, &[0x82, 0x20]).is_err(),
            "update after a field"
        );
    }

    /// A Huffman string seen before decodes the same from the remembered ones, and a
    /// different one is not mistaken for it.
    #[test]
    fn remembered_huffman_strings_decode_the_same() {
        // "www.example.com" and "no-cache", Huffman-coded, as literals without indexing
        // (name index 1, :authority).
        let www = [
            0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let nc = [0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf];
        let mut d = Decoder::new(4096);
        for _ in 0..3 {
            for (s, want) in [(&www[..], "www.example.com"), (&nc[..], "no-cache")] {
                let block = [&[0x01][..], s].concat();
                assert_eq!(decode_all(&mut d, &block).unwrap()[0].1, want);
            }
        }
        assert_eq!(d.recent.len(), 2);
        for i in 0..RECENT_STRINGS + 3 {
            // Raw-coded literals are not remembered; short Huffman ones replace the oldest.
            let v = format!("v{i}");
            let block = [&[0x01, v.len() as u8][..], v.as_bytes()].concat();
            assert_eq!(decode_all(&mut d, &block).unwrap()[0].1, v);
        }
        assert_eq!(d.recent.len(), 2);
    }

    #[test]
    fn garbage_gives_errors_not_panics() {
        let mut d = Decoder::new(4096);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let block: Vec<u8> = (0..len)
                .map(|i| (seed.rotate_left(i as u32 * 5) & 0xff) as u8)
                .collect();
            let _ = d.decode(&block, |_, _| {});
            assert!(d.size <= 4096);
        }
        assert!(integer(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], 7).is_err());
    }
}
