//! # attnforge-gpu-check
//!
//! One prepared check for the day an NVIDIA GPU is at hand. The build
//! half (here, feature `cpu`) writes a *pack*: the correctness cases
//! ([`cases`]), each with its inputs' seed and SHA-256, the CPU backend's
//! outputs at sm_90 and the f64 reference's ([`pack`]), the speed part's
//! configuration, the CUDA runner binary and the Python part. The run
//! half (on the GPU machine) draws each case's inputs from its seed
//! ([`inputs`]), launches it through the real launch path on a
//! `Gpu<CudaDriver>` ([`exec`], [`check`]), compares ([`compare`]),
//! measures decode and prefill speed ([`speed`]), and makes one launch
//! per kernel kind for compute-sanitizer ([`sanitize`]).
//!
//! Everything above the driver is generic over
//! [`attnforge_runtime::driver::Driver`] ([`drivers::Backend`]), so the
//! whole run half runs in this crate's tests on the CPU driver. It ran on
//! an NVIDIA H200 on 2026-12-04 (the crate's README).

pub mod cases;
pub mod check;
pub mod compare;
pub mod compile;
pub mod drivers;
pub mod error;
pub mod exec;
pub mod inputs;
pub mod isolate;
pub mod manifest;
#[cfg(feature = "cpu")]
pub mod pack;
pub mod raw;
pub mod sanitize;
pub mod spec_json;
pub mod speed;

pub use error::Error;
