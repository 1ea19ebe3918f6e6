//! Keys and values: a keyspace of fixed-length keys (prefix + zero-padded index), per-client
//! key pickers (uniform or sequential) and the send timestamp the watch writer embeds in values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::BenchError;

/// How clients choose keys from the keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// Uniformly at random.
    Uniform,
    /// 0, 1, 2, … shared by all clients, wrapping at the key count (loads each key once).
    Sequential,
}

/// Bytes at the start of a watch value: send time (nanoseconds since the UNIX epoch, big
/// endian) and a flag byte saying whether the write is in the measured phase.
pub const STAMP_LEN: usize = 9;

/// `count` keys of exactly `size` bytes: the prefix, then the index zero-padded to fill.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: Vec<u8>,
    width: usize,
    count: u64,
}

impl KeySpace {
    /// A keyspace, or an error when `size` leaves too few digits for `count` keys.
    pub fn new(prefix: &str, size: usize, count: u64) -> Result<Self, BenchError> {
        if count == 0 {
            return Err(BenchError::Config("--key-count must be at least 1".into()));
        }
        let digits = (count - 1).to_string().len();
        let width = size.saturating_sub(prefix.len());
        if width < digits {
            return Err(BenchError::Config(format!(
                "--key-size {size} is too small for {count} keys after the prefix {prefix:?} \
                 (need at least {})",
                prefix.len() + digits
            )));
        }
        Ok(Self {
            prefix: prefix.as_bytes().to_vec(),
            width,
            count,
        })
    }

    /// Number of keys.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The key with index `i` (taken modulo the key count).
    pub fn key(&self, i: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + self.width);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(format!("{:0w$}", i % self.count, w = self.width).as_bytes());
        k
    }

    /// The key prefix (watchers of the whole keyspace watch this).
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

/// The end of the range holding every key that starts with `prefix` (etcd's `--prefix`).
pub use berth_proto::keys::prefix_end;

/// SplitMix64: a tiny, fast, seedable generator; benchmark key choice needs no more.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-32 for any keyspace we use).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One client's key chooser. Sequential pickers share one counter so clients together
/// visit each key once before wrapping.
#[derive(Debug, Clone)]
pub struct KeyPicker {
    space: KeySpace,
    order: KeyOrder,
    rng: SplitMix64,
    next: Arc<AtomicU64>,
}

impl KeyPicker {
    /// A picker for client `client`; `next` is the counter shared by sequential pickers.
    pub fn new(
        space: KeySpace,
        order: KeyOrder,
        seed: u64,
        client: u64,
        next: Arc<AtomicU64>,
    ) -> Self {
        // Spread client seeds apart so clients do not walk the same random sequence.
        let rng = SplitMix64::new(seed ^ client.wrapping_mul(0xA076_1D64_78BD_642F));
        Self {
            space,
            order,
            rng,
            next,
        }
    }

    /// The next key index.
    pub fn next_index(&mut self) -> u64 {
        match self.order {
            KeyOrder::Uniform => self.rng.below(self.space.count()),
            KeyOrder::Sequential => self.next.fetch_add(1, Ordering::Relaxed) % self.space.count(),
        }
    }

    /// The next key.
    pub fn next_key(&mut self) -> Vec<u8> {
        let i = self.next_index();
        self.space.key(i)
    }

    /// The picker's random generator (for decisions other than key choice).
    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }
}

/// A value of `size` bytes (printable filler: its content does not matter to either server).
pub fn value(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Nanoseconds since the UNIX epoch now (0 if the clock is before 1970).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes the send stamp into the start of `value` (which must hold [`STAMP_LEN`] bytes).
pub fn stamp(value: &mut [u8], sent_unix_nanos: u64, measured: bool) {
    if let Some(head) = value.get_mut(..8) {
        head.copy_from_slice(&sent_unix_nanos.to_be_bytes());
    }
    if let Some(flag) = value.get_mut(8) {
        *flag = u8::from(measured);
    }
}

/// Reads a send stamp: `(sent_unix_nanos, measured)`, or `None` for a value without one.
pub fn read_stamp(value: &[u8]) -> Option<(u64, bool)> {
    let head: [u8; 8] = value.get(..8)?.try_into().ok()?;
    let flag = *value.get(8)?;
    Some((u64::from_be_bytes(head), flag == 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_pad_the_index() {
        let ks = KeySpace::new("bench/", 16, 10_000).expect("keyspace");
        assert_eq!(ks.key(42), b"bench/0000000042".to_vec());
        assert_eq!(ks.key(10_001), b"bench/0000000001".to_vec());
        assert!(KeySpace::new("bench/", 9, 10_000).is_err());
        assert!(KeySpace::new("bench/", 10, 10_000).is_ok());
        assert!(KeySpace::new("", 1, 10).is_ok());
        assert!(KeySpace::new("", 1, 11).is_err());
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"bench/"), b"bench0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn sequential_pickers_share_one_walk() {
        let ks = KeySpace::new("k", 4, 5).expect("keyspace");
        let next = Arc::new(AtomicU64::new(0));
        let mut a = KeyPicker::new(ks.clone(), KeyOrder::Sequential, 1, 0, next.clone());
        let mut b = KeyPicker::new(ks, KeyOrder::Sequential, 1, 1, next);
        let seen: Vec<u64> = (0..7)
            .map(|i| {
                if i % 2 == 0 {
                    a.next_index()
                } else {
                    b.next_index()
                }
            })
            .collect();
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 0, 1]);
    }

    #[test]
    fn uniform_picks_cover_the_keyspace_evenly() {
        let ks = KeySpace::new("", 2, 10).expect("keyspace");
        let mut p = KeyPicker::new(ks, KeyOrder::Uniform, 7, 3, Arc::default());
        let mut hits = [0u32; 10];
        for _ in 0..100_000 {
            let i = p.next_index() as usize;
            assert!(i < 10);
            hits[i] += 1;
        }
        // Expect 10,000 each; 5% is > 15 standard deviations.
        assert!(
            hits.iter().all(|&h| (9_500..10_500).contains(&h)),
            "{hits:?}"
        );
    }

    #[test]
    fn different_clients_draw_different_keys() {
        let ks = KeySpace::new("", 8, 1_000_000).expect("keyspace");
        let mut a = KeyPicker::new(ks.clone(), KeyOrder::Uniform, 1, 0, Arc::default());
        let mut b = KeyPicker::new(ks, KeyOrder::Uniform, 1, 1, Arc::default());
        let xs: Vec<u64> = (0..8).map(|_| a.next_index()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_index()).collect();
        assert_ne!(xs, ys);
    }

    #[test]
    fn unit_is_in_range() {
        let mut r = SplitMix64::new(0);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn stamps_round_trip() {
        let mut v = value(32);
        stamp(&mut v, 0x0102_0304_0506_0708, true);
        assert_eq!(read_stamp(&v), Some((0x0102_0304_0506_0708, true)));
        stamp(&mut v, 5, false);
        assert_eq!(read_stamp(&v), Some((5, false)));
        assert_eq!(read_stamp(b"short"), None);
        assert_eq!(value(3), b"abc".to_vec());
        assert!(unix_nanos() > 1_600_000_000_000_000_000);
    }
}
