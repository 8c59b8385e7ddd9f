//! Gunzip within `max_decoded_body_bytes` and within the request's in-flight reservation.
//! A single-member body whose trailer states its size (nearly every client's) is decoded by
//! libdeflate into a buffer of exactly that size, reserved first; anything else — several
//! members, a trailer that lies, a size over the limit — goes through flate2's streaming
//! decoder, which grows the output (and the reservation) step by step and stops at the
//! limit. Either way no more than the limit is ever allocated. Measured on the rig's
//! 5,000-line body (one core): libdeflate 0.65 s per decoded GB, zlib-rs 1.47, zlib 1.88.

use std::io::Read;

use bytes::Bytes;

use crate::error::ProxyError;
use crate::inflight::Reservation;

/// What the streaming path reads at a time.
const STEP: usize = 64 * 1024;

/// The size a gzip body's trailer states (its last member's, modulo 2^32).
pub fn stated_size(compressed: &[u8]) -> Option<u64> {
    let tail: [u8; 4] = compressed
        .get(compressed.len().checked_sub(4)?..)?
        .try_into()
        .ok()?;
    (compressed.len() >= 18).then(|| u32::from_le_bytes(tail) as u64)
}

/// Decompresses `compressed` (concatenated members too, as Go's reader does), refusing to
/// produce more than `limit` bytes. The decoded bytes are held in `reservation` beyond its
/// first `base` bytes (what the request holds besides), taken before they are written (503
/// when they do not fit); on success it holds `base` + the decoded length.
pub fn gunzip(
    compressed: &[u8],
    limit: u64,
    reservation: &mut Reservation,
    base: u64,
) -> Result<Bytes, ProxyError> {
    if let Some(size) = stated_size(compressed).filter(|&s| s <= limit) {
        if let Some(decoded) = whole(compressed, size as usize, reservation, base)? {
            return Ok(decoded);
        }
    }
    streaming(compressed, limit, reservation, base)
}

/// libdeflate into a buffer of the stated size: `None` unless that is exactly the body.
fn whole(
    compressed: &[u8],
    size: usize,
    reservation: &mut Reservation,
    base: u64,
) -> Result<Option<Bytes>, ProxyError> {
    reservation.ensure(base + size as u64)?;
    let mut out = vec![0u8; size];
    let decoded = libdeflater::Decompressor::new().gzip_decompress(compressed, &mut out);
    if decoded.is_ok_and(|n| n == size) {
        // libdeflate decodes the first member only. Its trailer (CRC-32, size) follows its
        // data; if that pattern is found only at the very end, the first member is the body.
        let mut trailer = libdeflater::crc32(&out).to_le_bytes().to_vec();
        trailer.extend_from_slice(&(size as u32).to_le_bytes());
        let mut found = memchr::memmem::find_iter(compressed, &trailer);
        if found.next() == Some(compressed.len() - 8) && found.next().is_none() {
            reservation.shrink_to(base + size as u64);
            return Ok(Some(Bytes::from(out)));
        }
    }
    Ok(None)
}

/// flate2's multi-member decoder; the output doubles as it fills, never past `limit`, each
/// size reserved before it is allocated.
fn streaming(
    compressed: &[u8],
    limit: u64,
    reservation: &mut Reservation,
    base: u64,
) -> Result<Bytes, ProxyError> {
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
    reservation.ensure(base + STEP as u64)?;
    let mut scratch = vec![0u8; STEP];
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = decoder.read(&mut scratch).map_err(ProxyError::BadGzip)?;
        if n == 0 {
            break;
        }
        if (out.len() + n) as u64 > limit {
            return Err(ProxyError::DecodedBodyTooLarge { limit });
        }
        if out.len() + n > out.capacity() {
            let capacity = (out.capacity() * 2)
                .max(out.len() + n)
                .max(STEP)
                .min(limit as usize);
            reservation.ensure(base + (STEP + capacity) as u64)?;
            out.reserve_exact(capacity - out.len());
        }
        out.extend_from_slice(&scratch[..n]);
    }
    reservation.shrink_to(base + out.len() as u64);
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inflight::Inflight;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn decode(compressed: &[u8], limit: u64) -> (Result<Bytes, ProxyError>, u64) {
        let inflight = Inflight::new(1 << 30);
        let mut reservation = inflight.reserve();
        let out = gunzip(compressed, limit, &mut reservation, 0);
        (out, reservation.bytes())
    }

    #[test]
    fn round_trips_and_reserves_exactly_what_it_holds() {
        let body = b"cpu,host=a v=1 1\n".repeat(1000);
        let (out, reserved) = decode(&gzip(&body), 1 << 20);
        assert_eq!(&out.unwrap()[..], &body[..]);
        assert_eq!(reserved, body.len() as u64);
    }

    #[test]
    fn concatenated_members_are_all_decoded_even_when_alike() {
        let mut two = gzip(b"a v=1\n");
        two.extend(gzip(b"b v=2\n"));
        assert_eq!(&decode(&two, 100).0.unwrap()[..], b"a v=1\nb v=2\n");
        // Two identical members end with the same trailer as the first: still both.
        let mut same = gzip(b"a v=1\n");
        same.extend(gzip(b"a v=1\n"));
        let (out, reserved) = decode(&same, 100);
        assert_eq!(&out.unwrap()[..], b"a v=1\na v=1\n");
        assert_eq!(reserved, 12);
    }

    #[test]
    fn bombs_stop_at_the_limit_whatever_the_trailer_says() {
        let bomb = gzip(&vec![b'a'; 10_000_000]);
        assert!(bomb.len() < 50_000, "{}", bomb.len());
        let (out, reserved) = decode(&bomb, 1_000_000);
        assert!(matches!(
            out,
            Err(ProxyError::DecodedBodyTooLarge { limit: 1_000_000 })
        ));
        assert!(reserved <= 1_000_000 + 2 * STEP as u64, "{reserved}");
        assert_eq!(decode(&bomb, 10_000_000).0.unwrap().len(), 10_000_000);
        // A trailer that claims little: libdeflate runs out of room, the stream decoder stops.
        let mut liar = bomb.clone();
        let n = liar.len();
        liar[n - 4..].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(
            decode(&liar, 1_000_000).0,
            Err(ProxyError::DecodedBodyTooLarge { .. } | ProxyError::BadGzip(_))
        ));
    }

    #[test]
    fn decoded_bytes_come_from_the_reservation() {
        let body = vec![b'x'; 200_000];
        let inflight = Inflight::new(100_000);
        let mut reservation = inflight.reserve();
        let out = gunzip(&gzip(&body), 1 << 20, &mut reservation, 0);
        assert!(matches!(out, Err(ProxyError::Overloaded)), "{out:?}");
    }

    #[test]
    fn unreadable_gzip_is_a_bad_request() {
        assert_eq!(decode(b"plain text", 100).0.unwrap_err().status(), 400);
        let mut cut = gzip(&b"a v=1\n".repeat(100));
        cut.truncate(cut.len() - 3);
        assert_eq!(decode(&cut, 10_000).0.unwrap_err().status(), 400);
    }
}
