//! Password hashing (PBKDF2-HMAC-SHA256), session tokens, random ids and hex helpers.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::io::Read;

pub const PBKDF2_ITERATIONS: u32 = 100_000;
const SCHEME: &str = "pbkdf2-sha256";

/// PBKDF2-HMAC-SHA256 with a 32-byte output (exactly one block).
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let keyed = Hmac::<Sha256>::new_from_slice(password).expect("HMAC accepts any key length");
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        out.iter_mut().zip(u).for_each(|(o, b)| *o ^= b);
    }
    out
}

/// `pbkdf2-sha256$100000$<salt hex>$<hash hex>` with a fresh 16-byte salt.
pub fn hash_password(password: &str) -> String {
    let salt = random_bytes::<16>();
    let hash = pbkdf2_sha256(password.as_bytes(), &salt, PBKDF2_ITERATIONS);
    format!("{SCHEME}${PBKDF2_ITERATIONS}${}${}", hex(&salt), hex(&hash))
}

/// Checks `password` against a stored hash; malformed hashes never verify.
pub fn verify_password(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [scheme, iterations, salt, hash] = parts.as_slice() else {
        return false;
    };
    let (Ok(iterations), Some(salt), Some(hash)) =
        (iterations.parse::<u32>(), unhex(salt), unhex(hash))
    else {
        return false;
    };
    if *scheme != SCHEME || iterations == 0 || iterations > 10_000_000 {
        return false;
    }
    constant_time_eq(
        &pbkdf2_sha256(password.as_bytes(), &salt, iterations),
        &hash,
    )
}

/// Burns the same time as a real verification (used when the user does not exist).
pub fn dummy_verify(password: &str) {
    let _ = pbkdf2_sha256(password.as_bytes(), &[0; 16], PBKDF2_ITERATIONS);
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new bearer token (64 hex chars) and the SHA-256 hex that is stored in `sessions`.
pub fn new_token() -> (String, String) {
    let token = hex(&random_bytes::<32>());
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Random UUID v4 string, used as primary key for users, sessions and events.
pub fn new_id() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_vectors() {
        // RFC 7914 / well-known PBKDF2-HMAC-SHA256 vectors (first 32 bytes).
        let v = |p: &str, s: &str, c| hex(&pbkdf2_sha256(p.as_bytes(), s.as_bytes(), c));
        assert_eq!(
            v("password", "salt", 1),
            "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
        );
        assert_eq!(
            v("password", "salt", 2),
            "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"
        );
        assert_eq!(
            v("password", "salt", 4096),
            "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"
        );
    }

    #[test]
    fn hash_roundtrip() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("pbkdf2-sha256$100000$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "garbage"));
        assert_eq!(new_id().len(), 36);
        assert_eq!(new_token().0.len(), 64);
    }
}
