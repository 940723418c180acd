//! Rotary position embedding frequencies, plain and with Llama-3.1's "llama3" scaling.

/// Llama-3.1+ RoPE frequency scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    /// Divides the low frequencies (8 for 3.1/3.3, 32 for 3.2).
    pub factor: f64,
    /// Wavelengths longer than `original / low_freq_factor` are fully scaled.
    pub low_freq_factor: f64,
    /// Wavelengths shorter than `original / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// Context length the model was pre-trained with (8192 for Llama-3).
    pub original_max_position_embeddings: f64,
}

/// Inverse frequencies `theta^(-2i/head_dim)` for `i < head_dim/2`, scaled as Llama-3.1 does when
/// `scaling` is given. Computed in f64 and rounded once, so every backend shares the same table.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<RopeScaling>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let f = match scaling {
                None => f,
                Some(s) => scale_frequency(f, s),
            };
            f as f32
        })
        .collect()
}

fn scale_frequency(f: f64, s: RopeScaling) -> f64 {
    let wavelength = 2.0 * std::f64::consts::PI / f;
    let low_freq_wavelength = s.original_max_position_embeddings / s.low_freq_factor;
    let high_freq_wavelength = s.original_max_position_embeddings / s.high_freq_factor;
    if wavelength > low_freq_wavelength {
        f / s.factor
    } else if wavelength < high_freq_wavelength {
        f
    } else {
        let smooth = (s.original_max_position_embeddings / wavelength - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * f / s.factor + smooth * f
    }
}
