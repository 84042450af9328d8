//! Signal models of a simulated pump: a load cycle, the sensors that follow it, and noise.
//!
//! Everything here is plain IEEE arithmetic (`+ - * /`, `round`, `sqrt`): no `sin`/`exp` from
//! the platform's libm, whose last bits differ between machines. Sines come from
//! [`sin_cycle`], a fixed polynomial, so a seed gives bit-identical values everywhere.

use rand_pcg::rand_core::Rng;
use rand_pcg::Pcg64;

/// Sensors of every asset, in emission order.
pub const SENSORS: usize = 5;
/// Measurement names: the sensor id is `{asset}/{name}`.
pub const SENSOR_NAMES: [&str; SENSORS] = ["vibration", "temperature", "pressure", "current", "flow"];
/// Engineering units, parallel to [`SENSOR_NAMES`].
pub const SENSOR_UNITS: [&str; SENSORS] = ["mm/s", "degC", "bar", "A", "m3/h"];
/// Standard deviation of each sensor's measurement noise, in its unit.
pub const NOISE_SIGMA: [f64; SENSORS] = [0.08, 0.15, 0.04, 0.35, 0.9];

pub const VIBRATION: usize = 0;
pub const TEMPERATURE: usize = 1;

const DAY_MS: u64 = 86_400_000;
const SQRT_3: f64 = 1.732_050_807_568_877_2;

/// A portable, seedable generator: PCG-64 whose state and stream are derived from
/// `(seed, asset, purpose)` with splitmix64, so each asset's streams depend on nothing else.
pub struct SimRng(Pcg64);

/// What a generator is for; each gets an independent sequence, so that switching fault
/// injection off leaves the underlying signal unchanged.
#[derive(Clone, Copy)]
pub enum Purpose {
    Params = 1,
    SignalFaults = 2,
    DeliveryFaults = 3,
    Noise = 4,
}

pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl SimRng {
    pub fn new(seed: u64, asset: u32, purpose: Purpose) -> Self {
        let base = splitmix64(splitmix64(seed) ^ ((asset as u64) << 8 | purpose as u64));
        let words = [splitmix64(base), splitmix64(base ^ 1), splitmix64(base ^ 2), splitmix64(base ^ 3)];
        let state = (words[0] as u128) << 64 | words[1] as u128;
        let stream = (words[2] as u128) << 64 | words[3] as u128;
        SimRng(Pcg64::new(state, stream))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `[lo, hi)`; `lo` when the range is empty.
    pub fn below(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + ((self.next_u64() as u128 * (hi - lo) as u128) >> 64) as u64
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(0, den) < num
    }

    /// `+1.0` or `-1.0`.
    pub fn sign(&mut self) -> f64 {
        if self.next_u64() >> 63 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// Gaussian-ish noise with mean 0 and σ 1: the Irwin–Hall sum of four 16-bit uniforms from
    /// one draw. It is bounded by ±2√3, so a deviation of 8σ can never be noise.
    #[inline]
    pub fn noise(&mut self) -> f64 {
        let x = self.next_u64();
        let sum = (x & 0xffff) + ((x >> 16) & 0xffff) + ((x >> 32) & 0xffff) + (x >> 48);
        // Four uniforms in [0, 1): mean 2, variance 1/3.
        ((sum as f64 + 2.0) * (1.0 / 65_536.0) - 2.0) * SQRT_3
    }
}

/// `sin(2π · ((t + offset) mod period) / period)`, portably.
pub fn sin_cycle(t: u64, period: u64, offset: u64) -> f64 {
    let frac = ((t % period + offset % period) % period) as f64 / period as f64;
    // Angle in [-π, π), then folded into [-π/2, π/2] where the polynomial is accurate.
    let mut x = if frac < 0.5 { frac } else { frac - 1.0 } * std::f64::consts::TAU;
    if x > std::f64::consts::FRAC_PI_2 {
        x = std::f64::consts::PI - x;
    } else if x < -std::f64::consts::FRAC_PI_2 {
        x = -std::f64::consts::PI - x;
    }
    // Taylor series to x^15: error below 1e-11 on [-π/2, π/2].
    let x2 = x * x;
    let mut p = -1.0 / 1_307_674_368_000.0;
    p = 1.0 / 6_227_020_800.0 + x2 * p;
    p = -1.0 / 39_916_800.0 + x2 * p;
    p = 1.0 / 362_880.0 + x2 * p;
    p = -1.0 / 5_040.0 + x2 * p;
    p = 1.0 / 120.0 + x2 * p;
    p = -1.0 / 6.0 + x2 * p;
    p = 1.0 + x2 * p;
    x * p
}

/// The fixed characteristics of one simulated pump, drawn once per asset.
#[derive(Debug, Clone)]
pub struct AssetParams {
    /// Main load cycle, 10–30 min, and its phase.
    load_period_ms: u64,
    load_phase_ms: u64,
    /// A faster secondary swing, 2.5–7 min.
    ripple_period_ms: u64,
    ripple_phase_ms: u64,
    load_base: f64,
    load_amplitude: f64,
    ripple_amplitude: f64,
    rated_current: f64,
    nominal_flow: f64,
    nominal_pressure: f64,
    vibration_base: f64,
    ambient_base: f64,
    ambient_daily: f64,
    temperature_offset: f64,
    temperature_load: f64,
    thermal_tau_ms: u64,
}

impl AssetParams {
    pub fn draw(rng: &mut SimRng) -> Self {
        let load_period_ms = rng.below(600, 1_801) * 1000;
        let ripple_period_ms = rng.below(150, 421) * 1000;
        AssetParams {
            load_period_ms,
            load_phase_ms: rng.below(0, load_period_ms),
            ripple_period_ms,
            ripple_phase_ms: rng.below(0, ripple_period_ms),
            load_base: rng.uniform(0.5, 0.65),
            load_amplitude: rng.uniform(0.2, 0.3),
            ripple_amplitude: rng.uniform(0.05, 0.1),
            rated_current: rng.uniform(25.0, 60.0),
            nominal_flow: rng.uniform(50.0, 120.0),
            nominal_pressure: rng.uniform(3.5, 7.5),
            vibration_base: rng.uniform(1.8, 3.2),
            ambient_base: rng.uniform(18.0, 24.0),
            ambient_daily: rng.uniform(2.0, 5.0),
            temperature_offset: rng.uniform(8.0, 14.0),
            temperature_load: rng.uniform(10.0, 20.0),
            thermal_tau_ms: rng.below(300, 901) * 1000,
        }
    }

    /// Load in `[0.05, 1]` at event time `t`.
    pub fn load(&self, t: u64) -> f64 {
        let load = self.load_base
            + self.load_amplitude * sin_cycle(t, self.load_period_ms, self.load_phase_ms)
            + self.ripple_amplitude * sin_cycle(t, self.ripple_period_ms, self.ripple_phase_ms);
        load.clamp(0.05, 1.0)
    }
}

/// The evolving state of one pump: its thermal lag behind the load.
#[derive(Debug, Clone)]
pub struct Plant {
    params: AssetParams,
    /// First-order lag of the load, which drives temperature.
    thermal_load: Option<f64>,
    thermal_alpha: f64,
}

impl Plant {
    pub fn new(params: AssetParams, period_ms: u64) -> Self {
        let thermal_alpha = (period_ms as f64 / params.thermal_tau_ms as f64).min(1.0);
        Plant { params, thermal_load: None, thermal_alpha }
    }

    /// Advances to event time `t` (call once per step, in order) and writes the noiseless
    /// value of every sensor.
    #[inline]
    pub fn step(&mut self, t: u64, out: &mut [f64; SENSORS]) {
        let p = &self.params;
        let load = p.load(t);
        let lagged = match self.thermal_load {
            None => load,
            Some(prev) => prev + (load - prev) * self.thermal_alpha,
        };
        self.thermal_load = Some(lagged);
        // Ambient peaks at 15:00 UTC.
        let ambient = p.ambient_base + p.ambient_daily * sin_cycle(t, DAY_MS, DAY_MS - 9 * 3_600_000);
        out[VIBRATION] = p.vibration_base * (0.75 + 0.5 * load);
        out[TEMPERATURE] = ambient + p.temperature_offset + p.temperature_load * lagged;
        // Pump curve: head falls as the flow rises.
        out[2] = p.nominal_pressure * (1.08 - 0.16 * load);
        out[3] = p.rated_current * (0.3 + 0.7 * load);
        out[4] = p.nominal_flow * (0.25 + 0.75 * load);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_cycle_matches_std_closely() {
        for i in 0..10_000u64 {
            let t = i * 7_919;
            let want = (std::f64::consts::TAU * ((t + 1234) % 600_000) as f64 / 600_000.0).sin();
            assert!((sin_cycle(t, 600_000, 1234) - want).abs() < 1e-10, "t={t}");
        }
    }

    #[test]
    fn noise_has_unit_variance_and_is_bounded() {
        let mut rng = SimRng::new(1, 0, Purpose::Noise);
        let n = 200_000;
        let (mut sum, mut sq) = (0.0, 0.0);
        for _ in 0..n {
            let x = rng.noise();
            assert!(x.abs() <= 2.0 * SQRT_3);
            sum += x;
            sq += x * x;
        }
        let mean = sum / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((sq / n as f64 - 1.0).abs() < 0.02);
    }

    #[test]
    fn rng_depends_on_seed_asset_and_purpose() {
        let mut rng = SimRng::new(42, 3, Purpose::Noise);
        let first = rng.next_u64();
        let mut again = SimRng::new(42, 3, Purpose::Noise);
        assert_eq!(first, again.next_u64());
        assert_ne!(first, SimRng::new(42, 4, Purpose::Noise).next_u64());
        assert_ne!(first, SimRng::new(43, 3, Purpose::Noise).next_u64());
    }
}
