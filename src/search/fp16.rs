//! IEEE 754 half precision, as bit patterns: what the GPU search stores when
//! `search.gpu_precision = "fp16"` (half the memory, half the bytes read per
//! search). Converted on the host, so that no device code is needed to fill
//! the matrix and the conversion is tested on any machine.

/// The nearest half-precision value to `x` (ties to even), as its bits.
/// Too large → ±infinity; too small → a subnormal or ±0; NaN stays NaN.
pub fn from_f32(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        // A quiet NaN keeps some payload bits; infinity stays infinity.
        return sign
            | 0x7c00
            | if man != 0 {
                0x200 | (man >> 13) as u16
            } else {
                0
            };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // Keep `keep` bits of the 24-bit significand (with its implicit 1) and
    // round what is dropped to nearest, ties to even. A carry out of the
    // mantissa bumps the exponent, up to infinity, which is what IEEE wants.
    let (kept, dropped, shift) = if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        (m >> shift, m & ((1 << shift) - 1), shift)
    } else {
        (((e as u32) << 10) | (man >> 13), man & 0x1fff, 13)
    };
    let half = 1u32 << (shift - 1);
    let up = dropped > half || (dropped == half && kept & 1 == 1);
    sign | (kept + up as u32) as u16
}

/// The value of half-precision bits `h`, exactly.
pub fn to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = (h >> 10) & 0x1f;
    let man = (h & 0x3ff) as u32;
    match exp {
        0 => sign * man as f32 * f32::powi(2.0, -24),
        0x1f if man == 0 => sign * f32::INFINITY,
        0x1f => f32::NAN,
        _ => f32::from_bits(
            ((h as u32 & 0x8000) << 16) | ((exp as u32 + 127 - 15) << 23) | (man << 13),
        ),
    }
}

/// Every value of `v`, converted.
pub fn from_f32_slice(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| from_f32(x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        for (x, h) in [
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (0.5, 0x3800),
            (0.1, 0x2e66),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00), // half way to the next binade rounds up, to infinity
            (1e6, 0x7c00),
            (f32::NEG_INFINITY, 0xfc00),
            (f32::powi(2.0, -24), 0x0001),
            (f32::powi(2.0, -25), 0x0000), // a tie with 0, which is even
            (f32::powi(2.0, -25) * 1.5, 0x0001),
            (f32::powi(2.0, -14), 0x0400),
            (1.0 + f32::powi(2.0, -11), 0x3c00), // tie, to even (down)
            (1.0 + 3.0 * f32::powi(2.0, -11), 0x3c02), // tie, to even (up)
        ] {
            assert_eq!(from_f32(x), h, "{x:e}");
        }
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
    }

    /// Every half value survives the way to f32 and back.
    #[test]
    fn every_half_round_trips() {
        for h in 0..=u16::MAX {
            let x = to_f32(h);
            if x.is_nan() {
                assert_eq!(h & 0x7c00, 0x7c00);
                continue;
            }
            assert_eq!(from_f32(x), h, "{h:#06x} = {x:e}");
        }
    }

    /// For floats in the range a gallery holds, no neighbouring half is nearer.
    #[test]
    fn rounding_is_to_the_nearest_half() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = f32::from_bits(s as u32 & 0x7fff_ffff) % 4.0
                * if s >> 63 == 1 { -1.0 } else { 1.0 };
            if !x.is_finite() {
                continue;
            }
            let h = from_f32(x);
            let err = (to_f32(h) as f64 - x as f64).abs();
            for n in [h.wrapping_sub(1), h.wrapping_add(1)] {
                let y = to_f32(n);
                if y.is_finite() && (n & 0x7fff) != 0x7fff && (h & 0x7fff) != 0 {
                    assert!(
                        err <= (y as f64 - x as f64).abs(),
                        "{x:e}: {h:#06x} ({}) but {n:#06x} ({y:e}) is nearer",
                        to_f32(h)
                    );
                }
            }
        }
    }
}
