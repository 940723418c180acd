//! Choosing a backend by device name (`cpu`, `cuda`, `cuda:N`), for everything that runs model
//! code written once over [`Backend`]: recipes, generation, evaluation.

use crate::{Backend, CpuBackend, EngineError, Result};

/// Work written once for any backend, run by [`run_on_device`].
pub trait DeviceJob {
    /// What the work returns.
    type Output;
    /// Runs on `be`.
    fn run<B: Backend>(self, be: &B) -> Self::Output;
}

/// The device names this build accepts, for messages.
pub fn device_names() -> &'static str {
    if cfg!(feature = "cuda") {
        "cpu, cuda or cuda:N"
    } else {
        "cpu (this build has no CUDA backend: build with the `cuda` feature)"
    }
}

/// A device, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// `cpu`.
    Cpu,
    /// `cuda` (GPU 0) or `cuda:N`.
    Cuda(usize),
}

/// Parses a device name (`cpu`, `cuda`, `cuda:N`); `None` for anything else. Only the syntax:
/// whether this build has the backend, and the machine the device, is for
/// [`run_on_device`] to find out.
pub fn parse_device(name: &str) -> Option<Device> {
    match name {
        "cpu" => Some(Device::Cpu),
        "cuda" => Some(Device::Cuda(0)),
        _ => {
            let n = name.strip_prefix("cuda:")?;
            n.bytes().all(|b| b.is_ascii_digit()).then(|| n.parse().ok().map(Device::Cuda))?
        }
    }
}

/// Builds the backend `device` names (`threads`: CPU threads, `None` for all cores) and runs
/// `job` on it. An unknown name, or a GPU that cannot be used, is an error (which the caller
/// prefixes with where the name came from: a config key, a flag).
pub fn run_on_device<J: DeviceJob>(device: &str, threads: Option<usize>, job: J) -> Result<J::Output> {
    match parse_device(device) {
        Some(Device::Cpu) => Ok(job.run(&CpuBackend::try_new(threads)?)),
        #[cfg(feature = "cuda")]
        Some(Device::Cuda(ordinal)) => {
            let be = crate::CudaBackend::new(ordinal)?;
            Ok(job.run(&be))
        }
        _ => Err(EngineError::Unsupported(format!("expected {}", device_names()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!(parse_device("cpu"), Some(Device::Cpu));
        assert_eq!(parse_device("cuda"), Some(Device::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Some(Device::Cuda(3)));
        for bad in ["cuda:", "cuda:+1", "cuda:x", "gpu", "CPU", ""] {
            assert_eq!(parse_device(bad), None, "{bad}");
        }
    }
}
