//! The cache file of one piece: a raw `#[repr(C)]` header, then the object's key, then
//! the piece's bytes. [`decode_piece`] turns a file into a checked [`Piece`].
//!
//! The header's checksum covers the header and the key, which say what the bytes are;
//! the bytes themselves are checked where every read is, by the store (blocks against
//! their ids, packs and index files against their names). A piece whose bytes fail
//! those checks is dropped (`Backend::evict`) and fetched again. Hashing every piece's
//! bytes a second time on each read cost a restore from the cache as much as decoding
//! it.

use bytes::Bytes;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// First bytes of a cache file.
/// Version 2: the checksum no longer covers the bytes (files of version 1 are not
/// read, so they are dropped and fetched again).
pub const PIECE_MAGIC: [u8; 8] = *b"STASPC02";

/// The longest key a piece may name (keys are short relative paths).
const MAX_KEY: usize = 1024;

/// At offset 0 of a cache file. Nothing here is trusted until [`decode_piece`] checked it.
#[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 8],
    /// Which piece of the object (its offset over the piece size).
    piece: U64,
    /// The whole object's size.
    object_size: U64,
    /// Bytes of the piece after the key.
    len: U32,
    /// Bytes of the key after the header.
    key_len: U32,
    /// blake3 of this header up to here, then the key.
    sum: [u8; 32],
}

const HEADER: usize = size_of::<RawHeader>();
const _: () = assert!(HEADER == 64);

/// A checked piece of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The object's key.
    pub key: String,
    /// Which piece.
    pub index: u64,
    /// The object's size.
    pub object_size: u64,
    /// The piece's bytes.
    pub data: Bytes,
}

fn sum(header: &RawHeader, key: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&header.as_bytes()[..HEADER - 32]);
    h.update(key);
    *h.finalize().as_bytes()
}

/// The bytes of the cache file holding `data` as piece `index` of `key`.
pub fn encode_piece(key: &str, index: u64, object_size: u64, data: &[u8]) -> Vec<u8> {
    let mut header = RawHeader {
        magic: PIECE_MAGIC,
        piece: U64::new(index),
        object_size: U64::new(object_size),
        // Pieces and keys are far below 4 GiB (PIECE_SIZE, MAX_KEY).
        len: U32::new(u32::try_from(data.len()).unwrap_or(u32::MAX)),
        key_len: U32::new(u32::try_from(key.len()).unwrap_or(u32::MAX)),
        sum: [0; 32],
    };
    header.sum = sum(&header, key.as_bytes());
    let mut out = Vec::with_capacity(HEADER + key.len() + data.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Why a cache file was not a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPiece {
    /// Shorter than its header says, or longer.
    Length,
    /// Not a cache file (magic), or a key that cannot be one.
    Header,
    /// The header and key do not match the checksum.
    Checksum,
}

/// Check and decode a whole cache file. Every field is checked: the magic, the lengths
/// against the file's length, the key's form, the checksum over header and key, and that
/// the piece lies inside its object (`piece_size` is the size pieces are cut at). The
/// bytes are the store's to check (see the module doc).
pub fn decode_piece(file: Bytes, piece_size: u64) -> Result<Piece, BadPiece> {
    let (raw, _) = RawHeader::read_from_prefix(&file).map_err(|_| BadPiece::Length)?;
    if raw.magic != PIECE_MAGIC {
        return Err(BadPiece::Header);
    }
    let key_len = raw.key_len.get() as usize;
    let len = raw.len.get() as usize;
    if key_len == 0 || key_len > MAX_KEY {
        return Err(BadPiece::Header);
    }
    let total = HEADER
        .checked_add(key_len)
        .and_then(|n| n.checked_add(len))
        .ok_or(BadPiece::Length)?;
    if total != file.len() {
        return Err(BadPiece::Length);
    }
    let key = &file[HEADER..HEADER + key_len];
    let data = file.slice(HEADER + key_len..);
    if sum(&raw, key) != raw.sum {
        return Err(BadPiece::Checksum);
    }
    let key = std::str::from_utf8(key).map_err(|_| BadPiece::Header)?;
    stasis_store::check_key(key).map_err(|_| BadPiece::Header)?;
    let (index, object_size) = (raw.piece.get(), raw.object_size.get());
    // The piece must be exactly the part of the object it says it is.
    let start = index.checked_mul(piece_size).ok_or(BadPiece::Header)?;
    let want = object_size.saturating_sub(start).min(piece_size);
    if start >= object_size || want != len as u64 {
        return Err(BadPiece::Header);
    }
    Ok(Piece {
        key: key.to_string(),
        index,
        object_size,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_every_damage_to_what_the_bytes_are_is_caught() {
        let data = vec![7u8; 100];
        let f = Bytes::from(encode_piece("packs/ab/c.pack", 2, 300, &data));
        let p = decode_piece(f.clone(), 100).expect("decode");
        assert_eq!(
            (p.key.as_str(), p.index, p.object_size),
            ("packs/ab/c.pack", 2, 300)
        );
        assert_eq!(&p.data[..], &data[..]);
        // Every single flipped byte of the header and key is refused; one in the
        // bytes is the store's to find (the block it holds fails its id).
        let bytes_at = f.len() - data.len();
        for i in 0..bytes_at {
            let mut bad = f.to_vec();
            bad[i] ^= 0x40;
            assert!(decode_piece(Bytes::from(bad), 100).is_err(), "byte {i}");
        }
        let mut flipped = f.to_vec();
        flipped[bytes_at] ^= 0x40;
        let p = decode_piece(Bytes::from(flipped), 100).expect("decodes");
        assert_ne!(&p.data[..], &data[..]);
        // Truncated, extended.
        assert_eq!(
            decode_piece(f.slice(..f.len() - 1), 100),
            Err(BadPiece::Length)
        );
        let mut long = f.to_vec();
        long.push(0);
        assert_eq!(decode_piece(Bytes::from(long), 100), Err(BadPiece::Length));
        assert_eq!(decode_piece(Bytes::new(), 100), Err(BadPiece::Length));
        // A piece that is not where it says in its object.
        let f = Bytes::from(encode_piece("index/x", 3, 300, &data));
        assert_eq!(decode_piece(f, 100), Err(BadPiece::Header));
        let f = Bytes::from(encode_piece("index/x", 0, 50, &data));
        assert_eq!(decode_piece(f, 100), Err(BadPiece::Header));
        // The last piece is short.
        let f = Bytes::from(encode_piece("index/x", 2, 250, &data[..50]));
        assert!(decode_piece(f, 100).is_ok());
        // A key that is not a store key.
        let f = Bytes::from(encode_piece("../x", 0, 100, &data));
        assert_eq!(decode_piece(f, 100), Err(BadPiece::Header));
    }
}
