//! The drivers of features not enabled: uninhabited types whose
//! constructor says which feature is off.

/// `pub mod $m` with an uninhabited `$driver` whose `new` returns
/// `$err::$variant` (crate::$m::$err).
macro_rules! absent_driver {
    ($m:ident, $driver:ident, $err:ident, $variant:ident) => {
        #[doc = concat!("Without the `", stringify!($m), "` feature: a driver that cannot be made.")]
        pub mod $m {
            use super::{DevicePtr, Driver, DriverError, KernelArg};
            use crate::$m::$err;
            use attnforge_codegen::kernels::KernelSpec;
            use attnforge_codegen::{CodeObjects, Target};

            #[doc = concat!("The driver, absent: [`", stringify!($driver), "::new`] says why.")]
            #[derive(Debug)]
            pub enum $driver {}

            impl $driver {
                /// Always the error saying the feature is off.
                pub fn new(
                    _ordinal: i32,
                    _registry: Option<&'static CodeObjects>,
                ) -> Result<$driver, $err> {
                    Err($err::$variant)
                }
            }

            impl Driver for $driver {
                type Stream = ();
                type Function = ();
                fn ordinal(&self) -> u32 {
                    match *self {}
                }
                fn target(&self) -> Target {
                    match *self {}
                }
                fn compute_units(&self) -> u32 {
                    match *self {}
                }
                fn allocate(&self, _: usize) -> Result<DevicePtr, DriverError> {
                    match *self {}
                }
                unsafe fn free(&self, _: DevicePtr) {
                    match *self {}
                }
                fn create_stream(&self) -> Result<(), DriverError> {
                    match *self {}
                }
                fn default_stream(&self) {
                    match *self {}
                }
                unsafe fn destroy_stream(&self, _: &()) {
                    match *self {}
                }
                fn synchronize(&self, _: &()) -> Result<(), DriverError> {
                    match *self {}
                }
                unsafe fn upload(&self, _: &(), _: DevicePtr, _: &[u8]) -> Result<(), DriverError> {
                    match *self {}
                }
                unsafe fn download(
                    &self,
                    _: &(),
                    _: DevicePtr,
                    _: *mut u8,
                    _: usize,
                ) -> Result<(), DriverError> {
                    match *self {}
                }
                unsafe fn copy(
                    &self,
                    _: &(),
                    _: DevicePtr,
                    _: DevicePtr,
                    _: usize,
                ) -> Result<(), DriverError> {
                    match *self {}
                }
                unsafe fn zero(&self, _: &(), _: DevicePtr, _: usize) -> Result<(), DriverError> {
                    match *self {}
                }
                fn load(
                    &self,
                    _: &KernelSpec,
                    _: attnforge_codegen::kernels::KernelPath,
                ) -> Result<(), DriverError> {
                    match *self {}
                }
                unsafe fn launch(
                    &self,
                    _: &(),
                    _: &(),
                    _: [u32; 3],
                    _: u32,
                    _: &[KernelArg],
                ) -> Result<(), DriverError> {
                    match *self {}
                }
            }
        }
    };
}
