//! Little-endian fixed-width integers and LEB128 varints, the primitives of
//! every on-disk format in the engine. Decoders take a cursor (`&mut &[u8]`)
//! and never panic on short or malformed input.

use crate::error::DecodeError;

pub(crate) fn put_varint32(dst: &mut Vec<u8>, v: u32) {
    put_varint64(dst, u64::from(v));
}

pub(crate) fn put_varint64(dst: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        dst.push((v as u8) | 0x80);
        v >>= 7;
    }
    dst.push(v as u8);
}

/// Appends a varint length followed by the bytes.
pub(crate) fn put_length_prefixed(dst: &mut Vec<u8>, bytes: &[u8]) {
    put_varint64(dst, bytes.len() as u64);
    dst.extend_from_slice(bytes);
}

pub(crate) fn get_varint64(src: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut result = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = src.split_first().ok_or(DecodeError("truncated varint"))?;
        *src = rest;
        if shift == 63 && byte > 1 {
            return Err(DecodeError("varint overflows 64 bits"));
        }
        result |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(result);
        }
    }
    Err(DecodeError("varint longer than 10 bytes"))
}

#[inline]
pub(crate) fn get_varint32(src: &mut &[u8]) -> Result<u32, DecodeError> {
    // The lengths in a block entry's header nearly always fit in one byte;
    // this path is inlined into the block reader's inner loop.
    if let Some((&b, rest)) = src.split_first() {
        if b < 0x80 {
            *src = rest;
            return Ok(u32::from(b));
        }
    }
    u32::try_from(get_varint64(src)?).map_err(|_| DecodeError("varint overflows 32 bits"))
}

/// A varint length followed by that many bytes.
pub(crate) fn get_length_prefixed<'a>(src: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = get_varint64(src)?;
    let len = usize::try_from(len).map_err(|_| DecodeError("length overflows usize"))?;
    get_bytes(src, len)
}

pub(crate) fn get_bytes<'a>(src: &mut &'a [u8], len: usize) -> Result<&'a [u8], DecodeError> {
    if src.len() < len {
        return Err(DecodeError("length runs past the end of the buffer"));
    }
    let (head, rest) = src.split_at(len);
    *src = rest;
    Ok(head)
}

pub(crate) fn get_u8(src: &mut &[u8]) -> Result<u8, DecodeError> {
    let (&b, rest) = src.split_first().ok_or(DecodeError("truncated byte"))?;
    *src = rest;
    Ok(b)
}

pub(crate) fn get_u32(src: &mut &[u8]) -> Result<u32, DecodeError> {
    let b = get_array::<4>(src)?;
    Ok(u32::from_le_bytes(b))
}

pub(crate) fn get_u64(src: &mut &[u8]) -> Result<u64, DecodeError> {
    let b = get_array::<8>(src)?;
    Ok(u64::from_le_bytes(b))
}

fn get_array<const N: usize>(src: &mut &[u8]) -> Result<[u8; N], DecodeError> {
    let bytes = get_bytes(src, N)?;
    bytes
        .try_into()
        .map_err(|_| DecodeError("truncated fixed-width integer"))
}

/// Reads a little-endian u32 at `offset` of `buf`, if it fits.
pub(crate) fn u32_at(buf: &[u8], offset: usize) -> Option<u32> {
    let bytes = buf.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        let values = [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ];
        let mut buf = Vec::new();
        for &v in &values {
            put_varint64(&mut buf, v);
        }
        let mut src = &buf[..];
        for &v in &values {
            assert_eq!(get_varint64(&mut src).unwrap(), v);
        }
        assert!(src.is_empty());
    }

    #[test]
    fn varint_rejects_truncation_and_overflow() {
        let mut buf = Vec::new();
        put_varint64(&mut buf, u64::MAX);
        for cut in 0..buf.len() {
            assert!(get_varint64(&mut &buf[..cut]).is_err());
        }
        let overlong = [0xffu8; 11];
        assert!(get_varint64(&mut &overlong[..]).is_err());
        let mut big = Vec::new();
        put_varint64(&mut big, u64::from(u32::MAX) + 1);
        assert!(get_varint32(&mut &big[..]).is_err());
    }

    #[test]
    fn length_prefixed_checks_bounds() {
        let mut buf = Vec::new();
        put_length_prefixed(&mut buf, b"hello");
        assert_eq!(get_length_prefixed(&mut &buf[..]).unwrap(), b"hello");
        assert!(get_length_prefixed(&mut &buf[..4]).is_err());
    }
}
