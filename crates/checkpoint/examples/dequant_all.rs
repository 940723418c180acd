//! Dequantizes every tensor of a GGUF file and reports the time taken.
//!
//! `cargo run --release -p afinar-checkpoint --example dequant_all -- path/to/model.gguf`
//! (defaults to the SmolLM2 asset of scripts/fetch-assets.sh).

use std::path::PathBuf;
use std::time::Instant;

use afinar_checkpoint::gguf::GgufFile;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => {
            let base = std::env::var_os("AFINAR_CACHE")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/afinar")))
                .ok_or("set AFINAR_CACHE or HOME, or pass a path")?;
            base.join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    let t0 = Instant::now();
    let f = GgufFile::open(&path)?;
    let open = t0.elapsed();
    // Touch every page once so the timing below measures dequantization, not disk reads.
    let mut bytes = 0usize;
    let mut checksum = 0u64;
    for name in f.tensor_names() {
        let v = f.tensor(name)?;
        bytes += v.data.len();
        checksum = v.data.iter().step_by(4096).fold(checksum, |a, &b| a.wrapping_add(b.into()));
    }
    for round in 0..3 {
        let t = Instant::now();
        let mut elements = 0usize;
        let mut sum = 0f64;
        for name in f.tensor_names() {
            let x = f.tensor(name)?.to_f32()?;
            elements += x.len();
            sum += f64::from(x[0]);
        }
        let dt = t.elapsed();
        println!(
            "round {round}: {} tensors, {elements} elements ({:.1} MB in, {:.1} MB out) in {:.1} ms \
             = {:.2} G elements/s ({} threads; open {:.1} ms; check {sum:.3} {checksum})",
            f.tensor_names().len(),
            bytes as f64 / 1e6,
            elements as f64 * 4.0 / 1e6,
            dt.as_secs_f64() * 1e3,
            elements as f64 / dt.as_secs_f64() / 1e9,
            rayon::current_num_threads(),
            open.as_secs_f64() * 1e3,
        );
    }
    // Single-threaded kernel throughput on reused buffers (no allocation, no page faults).
    for name in ["token_embd.weight", "blk.0.ffn_down.weight", "output_norm.weight"] {
        let Ok(v) = f.tensor(name) else { continue };
        let mut out = vec![0f32; v.numel()];
        let kernel = afinar_checkpoint::quant::kernel(v.dtype);
        kernel(v.data, &mut out); // fault the output pages in
        let reps = (100_000_000 / v.numel()).max(3);
        let t = Instant::now();
        for _ in 0..reps {
            kernel(v.data, &mut out);
            std::hint::black_box(&mut out);
        }
        let dt = t.elapsed().as_secs_f64();
        println!(
            "kernel {} ({name}): {:.2} G elements/s on one thread",
            v.dtype,
            (reps * v.numel()) as f64 / dt / 1e9
        );
    }
    Ok(())
}
