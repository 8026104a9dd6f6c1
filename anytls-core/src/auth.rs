//! The authentication preamble: `sha256(password) | u16 padding_len | padding`.
//!
//! The client sends it as its own TLS record right after the handshake. The
//! server checks it with an [`Authenticator`], which compares hashes in constant
//! time against every configured user and, on failure, hands back every byte it
//! was given so that they can be replayed to a fallback server.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error::AuthError;

/// Length of the password hash.
pub const HASH_LEN: usize = 32;
/// Length of the preamble without padding: hash and the u16 padding length.
pub const PREAMBLE_HEADER_LEN: usize = HASH_LEN + 2;

/// SHA-256 of a password. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash([u8; HASH_LEN]);

impl PasswordHash {
    /// Hashes a password (its UTF-8 bytes).
    pub fn of(password: &str) -> PasswordHash {
        PasswordHash(Sha256::digest(password.as_bytes()).into())
    }

    /// The raw digest, as it appears on the wire.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// Appends a preamble with `padding_len` zero bytes of padding.
pub fn encode_preamble(hash: &PasswordHash, padding_len: u16, out: &mut impl BufMut) {
    out.put_slice(&hash.0);
    out.put_u16(padding_len);
    out.put_bytes(0, usize::from(padding_len));
}

/// Index of a user in the [`Authenticator`] that accepted a preamble.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct UserId(pub usize);

/// The server's set of users (name and password hash).
#[derive(Clone, Default)]
pub struct Authenticator {
    users: Vec<(String, PasswordHash)>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "users",
                &self.users.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Outcome of [`Authenticator::verify`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AuthVerdict {
    /// The preamble is valid and has been removed from the front of the buffer;
    /// what remains there is frame data.
    Accepted {
        /// The user whose password matched.
        user: UserId,
        /// Bytes the preamble used (34 plus its padding).
        consumed: usize,
    },
    /// The bytes so far are a valid beginning; at least `needed` bytes in all
    /// are required. The buffer is untouched.
    NeedMore {
        /// Total bytes needed before the next decision can be made.
        needed: usize,
    },
    /// The preamble is wrong. `replay` holds every byte given so far (the buffer
    /// is now empty): hand them to a fallback, or close without a reply.
    Rejected {
        /// Why.
        reason: AuthError,
        /// The bytes to replay to a fallback server, unchanged.
        replay: Bytes,
    },
}

impl Authenticator {
    /// An authenticator with one user named `default`.
    pub fn single(password: &str) -> Authenticator {
        Authenticator::new([("default", password)])
    }

    /// An authenticator from `(name, password)` pairs. When two users share a
    /// password the later one wins, as in the reference.
    pub fn new<'a>(users: impl IntoIterator<Item = (&'a str, &'a str)>) -> Authenticator {
        Authenticator {
            users: users
                .into_iter()
                .map(|(n, p)| (n.to_owned(), PasswordHash::of(p)))
                .collect(),
        }
    }

    /// Adds a user by name and password hash.
    pub fn add_user(&mut self, name: impl Into<String>, hash: PasswordHash) {
        self.users.push((name.into(), hash));
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is configured (every preamble is then rejected).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The name of a user.
    pub fn user_name(&self, id: UserId) -> Option<&str> {
        self.users.get(id.0).map(|(n, _)| n.as_str())
    }

    /// Looks a received hash up in constant time with respect to its content:
    /// every user is compared, and the comparison itself does not stop early.
    fn find(&self, hash: &[u8]) -> Option<UserId> {
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, (_, h)) in self.users.iter().enumerate() {
            let eq = h.0.ct_eq(hash);
            index.conditional_assign(&(i as u64), eq);
            found |= eq;
        }
        bool::from(found).then_some(UserId(index as usize))
    }

    /// Checks the preamble at the front of `received`, which holds every byte
    /// read from the connection so far.
    ///
    /// This is more tolerant than the reference, which insists on the whole
    /// preamble arriving in the first read: a preamble split across reads is
    /// accepted once complete. The hash is decided as soon as its 32 bytes are
    /// there; the caller bounds the wait with a timeout.
    pub fn verify(&self, received: &mut BytesMut) -> AuthVerdict {
        let Some(hash) = received.get(..HASH_LEN) else {
            return AuthVerdict::NeedMore { needed: HASH_LEN };
        };
        let Some(user) = self.find(hash) else {
            return AuthVerdict::Rejected {
                reason: AuthError::UnknownPassword,
                replay: received.split().freeze(),
            };
        };
        let Some(len) = received.get(HASH_LEN..PREAMBLE_HEADER_LEN) else {
            return AuthVerdict::NeedMore {
                needed: PREAMBLE_HEADER_LEN,
            };
        };
        let consumed = PREAMBLE_HEADER_LEN + usize::from(u16::from_be_bytes([len[0], len[1]]));
        if received.len() < consumed {
            return AuthVerdict::NeedMore { needed: consumed };
        }
        received.advance(consumed);
        AuthVerdict::Accepted { user, consumed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_11_1_digests() {
        for (pw, hex) in [
            (
                "letmein",
                "1c8bfe8f801d79745c4631d09fff36c82aa37fc4cce4fc946683d7b336b63032",
            ),
            (
                "password",
                "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
            ),
            (
                "8JCsPssfgS8tiRwiMlhARg==",
                "47a0c57ae20978bb6d8dbd56e6ba91220475b74cf29974c0305d96a8b955ebb3",
            ),
        ] {
            assert_eq!(hex::encode(PasswordHash::of(pw).as_bytes()), hex);
        }
    }

    #[test]
    fn vectors_11_2_preamble() {
        let h = PasswordHash::of("letmein");
        let mut v = Vec::new();
        encode_preamble(&h, 30, &mut v);
        assert_eq!(v.len(), 64);
        assert_eq!(
            hex::encode(&v),
            "1c8bfe8f801d79745c4631d09fff36c82aa37fc4cce4fc946683d7b336b63032001e000000000000000000000000000000000000000000000000000000000000"
        );
        let mut v = Vec::new();
        encode_preamble(&h, 0, &mut v);
        assert_eq!(
            hex::encode(&v),
            "1c8bfe8f801d79745c4631d09fff36c82aa37fc4cce4fc946683d7b336b630320000"
        );
    }

    #[test]
    fn verify_accepts_a_split_preamble_and_keeps_frame_bytes() {
        let auth = Authenticator::new([("alice", "a"), ("bob", "letmein")]);
        let mut wire = Vec::new();
        encode_preamble(&PasswordHash::of("letmein"), 30, &mut wire);
        wire.extend_from_slice(b"\x08\0\0\0\0\0\0");
        let mut buf = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            let v = auth.verify(&mut buf);
            let want = if i < 32 {
                32
            } else if i < 34 {
                34
            } else {
                64
            };
            assert_eq!(v, AuthVerdict::NeedMore { needed: want }, "at {i}");
            buf.put_u8(*b);
            if i == 63 {
                break;
            }
        }
        assert_eq!(
            auth.verify(&mut buf),
            AuthVerdict::Accepted {
                user: UserId(1),
                consumed: 64
            }
        );
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&wire[..]);
        assert!(matches!(
            auth.verify(&mut buf),
            AuthVerdict::Accepted { .. }
        ));
        assert_eq!(&buf[..], b"\x08\0\0\0\0\0\0");
        assert_eq!(auth.user_name(UserId(1)), Some("bob"));
    }

    #[test]
    fn verify_rejects_with_every_byte_for_the_fallback() {
        let auth = Authenticator::single("letmein");
        let probe = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec();
        let mut buf = BytesMut::from(&probe[..]);
        assert_eq!(
            auth.verify(&mut buf),
            AuthVerdict::Rejected {
                reason: AuthError::UnknownPassword,
                replay: Bytes::from(probe),
            }
        );
        assert!(buf.is_empty());
        let mut short = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(
            auth.verify(&mut short),
            AuthVerdict::NeedMore { needed: 32 }
        );
        let empty = Authenticator::default();
        let mut buf = BytesMut::from(&[0u8; 40][..]);
        assert!(matches!(
            empty.verify(&mut buf),
            AuthVerdict::Rejected { .. }
        ));
    }

    #[test]
    fn duplicate_passwords_pick_the_last_user() {
        let auth = Authenticator::new([("a", "x"), ("b", "y"), ("c", "x")]);
        let mut buf = BytesMut::new();
        encode_preamble(&PasswordHash::of("x"), 0, &mut buf);
        assert_eq!(
            auth.verify(&mut buf),
            AuthVerdict::Accepted {
                user: UserId(2),
                consumed: 34
            }
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let auth = Authenticator::new([("alice", "hunter2")]);
        let h = PasswordHash::of("hunter2");
        let dbg = format!("{auth:?} {h:?}");
        assert!(dbg.contains("alice"));
        assert!(!dbg.contains("hunter2"));
        assert!(!dbg.contains(&hex::encode(h.as_bytes())[..8]));
    }
}
