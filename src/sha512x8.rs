//! HMAC-SHA512 of eight messages at once, one per 64-bit lane of AVX-512 registers: the
//! restore gate's check of every page's HMAC ([`crate::page_auth`]). SHA-512 is one long
//! chain of dependent 64-bit steps, so one message keeps a core's vector units idle; eight
//! pages side by side cost about what one does. Used only where the CPU has AVX-512F
//! ([`available`]); elsewhere, and for pages that are not in a batch of eight, the check
//! runs one page at a time with RustCrypto's HMAC, which the tests compare this with.
//!
//! A wrong result here cannot pass a bad page: a page passes only if this computes the
//! exact HMAC it carries, and a page that fails goes to SQLCipher's own check.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use sha2::digest::generic_array::GenericArray;

/// Lanes: messages hashed at once.
pub const LANES: usize = 8;
const BLOCK: usize = 128;

/// SHA-512's initial state (FIPS 180-4, 5.3.5).
const H0: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

/// SHA-512's round constants (FIPS 180-4, 4.2.3).
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const K: [u64; 80] = [
    0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc,
    0x3956c25bf348b538, 0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118,
    0xd807aa98a3030242, 0x12835b0145706fbe, 0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235, 0xc19bf174cf692694,
    0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
    0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5,
    0x983e5152ee66dfab, 0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2, 0xd5a79147930aa725, 0x06ca6351e003826f, 0x142929670a0e6e70,
    0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed, 0x53380d139d95b3df,
    0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
    0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30,
    0xd192e819d6ef5218, 0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8, 0x1e376c085141ab53, 0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373, 0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b,
    0xca273eceea26619c, 0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178,
    0x06f067aa72176fba, 0x0a637dc5a2c898a6, 0x113f9804bef90dae, 0x1b710b35131c471b,
    0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc, 0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817,
];

/// An HMAC-SHA512 key, as the states after its inner and outer pad blocks.
#[derive(Clone)]
pub struct Keyed {
    inner: [u64; 8],
    outer: [u64; 8],
}

impl Keyed {
    /// For a key of at most one block (128 bytes).
    pub fn new(key: &[u8]) -> Self {
        assert!(
            key.len() <= BLOCK,
            "HMAC keys longer than a block are hashed first"
        );
        let padded = |pad: u8| {
            let mut block = [pad; BLOCK];
            for (b, k) in block.iter_mut().zip(key) {
                *b ^= k;
            }
            let mut state = H0;
            sha2::compress512(&mut state, &[GenericArray::clone_from_slice(&block)]);
            state
        };
        Self {
            inner: padded(0x36),
            outer: padded(0x5c),
        }
    }
}

/// Whether this CPU runs [`hmac8`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The HMAC-SHA512 of `data[i]` followed by `suffix[i]`, for each of the eight lanes;
/// every `data[i]` has the same length. Panics unless [`available`].
pub fn hmac8(keyed: &Keyed, data: [&[u8]; LANES], suffix: [[u8; 4]; LANES]) -> [[u8; 64]; LANES] {
    assert!(available(), "hmac8 needs AVX-512F");
    assert!(data.iter().all(|d| d.len() == data[0].len()));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX-512F (checked above).
    unsafe {
        avx512::hmac8(keyed, data, suffix)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

/// The last blocks of a message of `total_len` bytes (the pad block included): `rest`, its
/// bytes past the last whole block, then `suffix`, the 0x80 marker, zeros and the length
/// in bits, in one or two blocks. Returns the blocks and how many bytes of them are used.
#[cfg(target_arch = "x86_64")]
fn final_blocks(rest: &[u8], suffix: &[u8], total_len: usize) -> ([u8; 2 * BLOCK], usize) {
    let mut tail = [0u8; 2 * BLOCK];
    let used = rest.len() + suffix.len();
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()..used].copy_from_slice(suffix);
    tail[used] = 0x80;
    let end = if used + 1 + 16 <= BLOCK {
        BLOCK
    } else {
        2 * BLOCK
    };
    tail[end - 16..end].copy_from_slice(&(total_len as u128 * 8).to_be_bytes());
    (tail, end)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;

    /// Eight SHA-512 states, word by word: `state[j]` holds word j of every lane.
    type State = [__m512i; 8];

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn hmac8(
        keyed: &Keyed,
        data: [&[u8]; LANES],
        suffix: [[u8; 4]; LANES],
    ) -> [[u8; 64]; LANES] {
        let len = data[0].len();
        let whole = len / BLOCK;
        let mut state = broadcast(&keyed.inner);
        for b in 0..whole {
            compress8(
                &mut state,
                std::array::from_fn(|i| &data[i][b * BLOCK..][..BLOCK]),
            );
        }
        let tails: [([u8; 2 * BLOCK], usize); LANES] = std::array::from_fn(|i| {
            final_blocks(&data[i][whole * BLOCK..], &suffix[i], BLOCK + len + 4)
        });
        for at in (0..tails[0].1).step_by(BLOCK) {
            compress8(
                &mut state,
                std::array::from_fn(|i| &tails[i].0[at..][..BLOCK]),
            );
        }
        let inner = words(&state);
        let mut state = broadcast(&keyed.outer);
        let outer: [([u8; 2 * BLOCK], usize); LANES] =
            std::array::from_fn(|i| final_blocks(&to_bytes(&inner[i]), &[], BLOCK + 64));
        compress8(&mut state, std::array::from_fn(|i| &outer[i].0[..BLOCK]));
        let macs = words(&state);
        std::array::from_fn(|i| to_bytes(&macs[i]))
    }

    fn to_bytes(words: &[u64; 8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (chunk, word) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    fn broadcast(state: &[u64; 8]) -> State {
        std::array::from_fn(|j| _mm512_set1_epi64(state[j] as i64))
    }

    /// Each lane's state, back as words.
    #[target_feature(enable = "avx512f")]
    fn words(state: &State) -> [[u64; 8]; LANES] {
        let mut lanes = [[0u64; 8]; LANES];
        for (j, vector) in state.iter().enumerate() {
            let mut word = [0u64; LANES];
            // SAFETY: `word` holds eight u64, the 64 bytes stored.
            unsafe { _mm512_storeu_epi64(word.as_mut_ptr().cast(), *vector) };
            for (lane, w) in lanes.iter_mut().zip(word) {
                lane[j] = w;
            }
        }
        lanes
    }

    #[target_feature(enable = "avx512f")]
    fn compress8(state: &mut State, blocks: [&[u8]; LANES]) {
        let mut w: [__m512i; 16] = std::array::from_fn(|t| {
            let word: [u64; LANES] = std::array::from_fn(|i| {
                u64::from_be_bytes(blocks[i][8 * t..][..8].try_into().expect("8 bytes"))
            });
            // SAFETY: `word` holds eight u64, the 64 bytes loaded.
            unsafe { _mm512_loadu_epi64(word.as_ptr().cast()) }
        });
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
        for (t, k) in K.iter().enumerate() {
            let wt = if t < 16 { w[t] } else { next_word(&mut w, t) };
            let big_s1 = xor3(
                _mm512_ror_epi64::<14>(e),
                _mm512_ror_epi64::<18>(e),
                _mm512_ror_epi64::<41>(e),
            );
            // Ch(e, f, g) = e ? f : g; Maj(a, b, c) = the majority bit.
            let ch = _mm512_ternarylogic_epi64::<0xca>(e, f, g);
            let t1 = add(
                add(add(h, big_s1), add(ch, _mm512_set1_epi64(*k as i64))),
                wt,
            );
            let big_s0 = xor3(
                _mm512_ror_epi64::<28>(a),
                _mm512_ror_epi64::<34>(a),
                _mm512_ror_epi64::<39>(a),
            );
            let maj = _mm512_ternarylogic_epi64::<0xe8>(a, b, c);
            let t2 = add(big_s0, maj);
            h = g;
            g = f;
            f = e;
            e = add(d, t1);
            d = c;
            c = b;
            b = a;
            a = add(t1, t2);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = add(*s, v);
        }
    }

    /// Word `t` (16 or later) of the message schedule, kept in `w`'s ring of 16.
    #[target_feature(enable = "avx512f")]
    fn next_word(w: &mut [__m512i; 16], t: usize) -> __m512i {
        let (w2, w7, w15, w16) = (
            w[(t - 2) % 16],
            w[(t - 7) % 16],
            w[(t - 15) % 16],
            w[t % 16],
        );
        let s1 = xor3(
            _mm512_ror_epi64::<19>(w2),
            _mm512_ror_epi64::<61>(w2),
            _mm512_srli_epi64::<6>(w2),
        );
        let s0 = xor3(
            _mm512_ror_epi64::<1>(w15),
            _mm512_ror_epi64::<8>(w15),
            _mm512_srli_epi64::<7>(w15),
        );
        let next = add(add(s1, w7), add(s0, w16));
        w[t % 16] = next;
        next
    }

    #[target_feature(enable = "avx512f")]
    fn add(x: __m512i, y: __m512i) -> __m512i {
        _mm512_add_epi64(x, y)
    }

    #[target_feature(enable = "avx512f")]
    fn xor3(x: __m512i, y: __m512i, z: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64::<0x96>(x, y, z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use sha2::Sha512;

    #[test]
    fn eight_lanes_give_rustcrypto_s_hmac_of_each_message() {
        if !available() {
            eprintln!("no AVX-512F on this CPU: nothing to compare");
            return;
        }
        let key: Vec<u8> = (0..32u8).map(|b| b.wrapping_mul(37)).collect();
        let keyed = Keyed::new(&key);
        // Lengths around the block and padding edges, and the gate's: a 4096-byte page
        // without its HMAC (4032) and page 1's (4016).
        for len in [0, 1, 107, 108, 111, 112, 127, 128, 236, 4016, 4032, 65_472] {
            let messages: Vec<Vec<u8>> = (0..LANES)
                .map(|i| (0..len).map(|n| (n * 31 + i * 7 + len) as u8).collect())
                .collect();
            let suffix: [[u8; 4]; LANES] =
                std::array::from_fn(|i| (i as u32 * 1000 + 2).to_le_bytes());
            let macs = hmac8(&keyed, std::array::from_fn(|i| &messages[i][..]), suffix);
            for i in 0..LANES {
                let mut mac = Hmac::<Sha512>::new_from_slice(&key).unwrap();
                mac.update(&messages[i]);
                mac.update(&suffix[i]);
                assert_eq!(
                    macs[i][..],
                    mac.finalize().into_bytes()[..],
                    "length {len}, lane {i}"
                );
            }
        }
    }
}
