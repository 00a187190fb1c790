//! Device memory, views and streams over a [`Driver`], and how queued work
//! never outlives the memory it uses.
//!
//! # Asynchrony without use-after-free
//! Launches and copies are queued on a [`Stream`] and not waited for.
//! Every device allocation is reference-counted, and a stream holds a
//! reference to each allocation its queued work uses until it is
//! synchronized. So:
//! - dropping a [`DeviceBuffer`] (or a cache, its arena, a workspace) while
//!   a queued kernel still uses it frees nothing then: the memory is freed
//!   when the last stream using it has been synchronized (or dropped, which
//!   synchronizes it);
//! - an allocation with queued work on one stream is refused on another
//!   ([`crate::RuntimeError::Busy`], checked before anything is queued)
//!   until that stream is synchronized, so two streams never race on it;
//! - on one stream, work runs in order, so reusing a buffer (an arena page
//!   freed and reallocated, a workspace re-planned) for later work on the
//!   same stream can never overwrite what earlier work still reads.
//!
//! A stream also keeps the kernels of its queued launches loaded. One
//! operation's checks and enqueues, and a synchronize's wait and release,
//! are serialized per stream, so threads sharing a stream cannot make its
//! tracking miss what was queued; a run also holds its plan's workspace
//! from its check to its last enqueue, so a re-plan cannot slip in between.
//!
//! Views made from raw pointers ([`View::from_raw`]) are not tracked: their
//! owner keeps that promise, as the constructor's contract says.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::HashMap;

use attnforge_codegen::kernels::{path_symbol, KernelPath, KernelSpec};
use attnforge_codegen::pod::Pod;

use super::kernels::Loaded;
use super::Element;
use crate::driver::{DevicePtr, Driver, KernelArg};
use crate::RuntimeError;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id (streams, caches, workspaces).
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// One device allocation, freed when its last owner (a buffer, or a stream
/// with queued work on it) lets go.
pub(crate) struct Alloc<D: Driver> {
    driver: Arc<D>,
    ptr: DevicePtr,
    bytes: usize,
    /// The stream with queued work on it, 0 when none.
    busy: Mutex<u64>,
}

impl<D: Driver> Drop for Alloc<D> {
    fn drop(&mut self) {
        // SAFETY: allocated by this driver in `DeviceBuffer::new`, freed
        // once; no queued work uses it, since every stream with queued work
        // on it holds a reference until it is synchronized.
        unsafe { self.driver.free(self.ptr) };
    }
}

/// A device: a [`Driver`], its default stream and the kernels loaded on
/// it. Cheap to clone (clones share all three).
pub struct Gpu<D: Driver> {
    driver: Arc<D>,
    default: Stream<D>,
    loaded: Arc<Mutex<HashMap<String, Arc<Loaded<D>>>>>,
}

impl<D: Driver> Clone for Gpu<D> {
    fn clone(&self) -> Self {
        Gpu {
            driver: self.driver.clone(),
            default: self.default.clone(),
            loaded: self.loaded.clone(),
        }
    }
}

impl<D: Driver> std::fmt::Debug for Gpu<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.driver.ordinal())
            .field("target", &self.driver.target())
            .finish()
    }
}

impl<D: Driver> Gpu<D> {
    /// The launch path over `driver`.
    pub fn new(driver: D) -> Gpu<D> {
        let driver = Arc::new(driver);
        let default = Stream::wrap(driver.clone(), driver.default_stream(), false);
        Gpu {
            driver,
            default,
            loaded: Arc::default(),
        }
    }

    /// `spec`'s kernel, loaded on first use and kept.
    pub(crate) fn loaded(
        &self,
        spec: KernelSpec,
        path: KernelPath,
    ) -> Result<Arc<Loaded<D>>, RuntimeError> {
        let key = path_symbol(&spec, self.driver.target(), path);
        let mut map = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = map.get(&key) {
            return Ok(l.clone());
        }
        let l = Arc::new(Loaded::load(self, spec, path)?);
        map.insert(key, l.clone());
        Ok(l)
    }

    /// The driver (the CPU driver's call trace, for example).
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> u32 {
        self.driver.ordinal()
    }

    /// A new stream, destroyed on drop (after waiting for its work).
    pub fn stream(&self) -> Result<Stream<D>, RuntimeError> {
        let raw = self.driver.create_stream()?;
        Ok(Stream::wrap(self.driver.clone(), raw, true))
    }

    /// The device's default stream, for callers that ask for it (the
    /// host-slice convenience methods of [`crate::device::Device`] use it).
    pub fn default_stream(&self) -> Stream<D> {
        self.default.clone()
    }

    /// `len` elements of uninitialized device memory.
    pub fn alloc<T: Pod>(&self, len: usize) -> Result<DeviceBuffer<T, D>, RuntimeError> {
        DeviceBuffer::new(self, len)
    }

    /// `len` zeroed elements, zeroed on `stream`.
    pub fn alloc_zeroed<T: Pod>(
        &self,
        stream: &Stream<D>,
        len: usize,
    ) -> Result<DeviceBuffer<T, D>, RuntimeError> {
        stream.same_device("stream", self.ordinal())?;
        let b = DeviceBuffer::new(self, len)?;
        let _submit = stream.submit();
        stream.use_alloc(&b.alloc, "buffer")?;
        // SAFETY: the range is the whole live allocation, which the stream
        // now keeps alive until it is synchronized.
        unsafe {
            stream
                .driver()
                .zero(&stream.inner.raw, b.alloc.ptr, b.bytes())?
        };
        Ok(b)
    }

    /// A device copy of `host`, uploaded on `stream`.
    pub fn upload<T: Pod>(
        &self,
        stream: &Stream<D>,
        host: &[T],
    ) -> Result<DeviceBuffer<T, D>, RuntimeError> {
        let mut b = DeviceBuffer::new(self, host.len())?;
        b.upload(stream, host)?;
        Ok(b)
    }
}

pub(crate) struct StreamInner<D: Driver> {
    driver: Arc<D>,
    pub(crate) raw: D::Stream,
    id: u64,
    owned: bool,
    /// Held while work is checked and queued, and while a synchronize
    /// waits and releases: what a stream tracks is always what it queued.
    submit: Mutex<()>,
    /// Allocations with queued work on this stream.
    pending: Mutex<Vec<Arc<Alloc<D>>>>,
    /// Kernels with queued launches on this stream (a module is not
    /// unloaded under them).
    kernels: Mutex<Vec<Arc<Loaded<D>>>>,
}

impl<D: Driver> StreamInner<D> {
    fn synchronize(&self) -> Result<(), RuntimeError> {
        let _submit = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.driver.synchronize(&self.raw);
        // Whether or not queued work failed, none is left on the device.
        let done = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for a in &done {
            *a.busy.lock().unwrap_or_else(|e| e.into_inner()) = 0;
        }
        drop(done);
        self.kernels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(r?)
    }
}

impl<D: Driver> Drop for StreamInner<D> {
    fn drop(&mut self) {
        // Queued work finishes before its memory can be freed.
        let _ = self.synchronize();
        if self.owned {
            // SAFETY: synchronized above; this is the last handle.
            unsafe { self.driver.destroy_stream(&self.raw) };
        }
    }
}

/// A queue of device work. Launches and copies on it run in order, after
/// the call that queued them returns; [`Stream::synchronize`] waits for
/// them. Clones share the stream (the last one destroys it, after waiting).
pub struct Stream<D: Driver> {
    pub(crate) inner: Arc<StreamInner<D>>,
}

impl<D: Driver> Clone for Stream<D> {
    fn clone(&self) -> Self {
        Stream {
            inner: self.inner.clone(),
        }
    }
}

impl<D: Driver> std::fmt::Debug for Stream<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.inner.id)
            .field("ordinal", &self.ordinal())
            .field("default", &!self.inner.owned)
            .finish()
    }
}

impl<D: Driver> Stream<D> {
    fn wrap(driver: Arc<D>, raw: D::Stream, owned: bool) -> Stream<D> {
        Stream {
            inner: Arc::new(StreamInner {
                driver,
                raw,
                id: next_id(),
                owned,
                submit: Mutex::new(()),
                pending: Mutex::new(Vec::with_capacity(64)),
                kernels: Mutex::new(Vec::with_capacity(8)),
            }),
        }
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> u32 {
        self.inner.driver.ordinal()
    }

    /// This stream's process-unique id (what busy errors name).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Waits for everything queued on the stream; errors of queued work
    /// surface here. Memory dropped while in use is freed now.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        self.inner.synchronize()
    }

    pub(crate) fn driver(&self) -> &D {
        &self.inner.driver
    }

    /// Holds the stream for one submission: every check and enqueue of one
    /// operation happens under it, so a concurrent synchronize cannot
    /// release what is being queued.
    pub(crate) fn submit(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.submit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `k` loaded until the stream's queued launches of it have run.
    pub(crate) fn use_kernel(&self, k: &Arc<Loaded<D>>) {
        let mut ks = self.inner.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if !ks.iter().any(|x| Arc::ptr_eq(x, k)) {
            ks.push(k.clone());
        }
    }

    /// Records that queued work on this stream uses `a`: refused when
    /// another stream has queued work on it.
    pub(crate) fn use_alloc(&self, a: &Arc<Alloc<D>>, what: &str) -> Result<(), RuntimeError> {
        let mut busy = a.busy.lock().unwrap_or_else(|e| e.into_inner());
        if *busy == self.inner.id {
            return Ok(());
        }
        if *busy != 0 {
            return Err(RuntimeError::Busy {
                what: what.to_string(),
                stream: *busy,
                asked: self.inner.id,
            });
        }
        *busy = self.inner.id;
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(a.clone());
        Ok(())
    }

    /// Checks that `ordinal` (of the object named `what`) is this stream's.
    pub(crate) fn same_device(&self, what: &str, ordinal: u32) -> Result<(), RuntimeError> {
        if ordinal != self.ordinal() {
            return Err(RuntimeError::WrongDevice {
                what: what.to_string(),
                found: ordinal,
                expected: self.ordinal(),
            });
        }
        Ok(())
    }
}

/// `len` elements of `T` in device memory. Dropping it while queued work
/// uses it is safe: the memory is freed once that work is done.
pub struct DeviceBuffer<T, D: Driver> {
    pub(crate) alloc: Arc<Alloc<D>>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T, D: Driver> std::fmt::Debug for DeviceBuffer<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("ptr", &self.alloc.ptr)
            .field("len", &self.len)
            .field("ordinal", &self.alloc.driver.ordinal())
            .finish()
    }
}

impl<T, D: Driver> DeviceBuffer<T, D> {
    /// Elements held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bytes(&self) -> usize {
        self.alloc.bytes
    }

    /// The ordinal of the device it lives on.
    pub fn ordinal(&self) -> u32 {
        self.alloc.driver.ordinal()
    }
}

impl<T: Pod, D: Driver> DeviceBuffer<T, D> {
    fn new(gpu: &Gpu<D>, len: usize) -> Result<DeviceBuffer<T, D>, RuntimeError> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| RuntimeError::Shape(format!("{len} elements overflow usize bytes")))?;
        let ptr = gpu.driver.allocate(bytes)?;
        Ok(DeviceBuffer {
            alloc: Arc::new(Alloc {
                driver: gpu.driver.clone(),
                ptr,
                bytes,
                busy: Mutex::new(0),
            }),
            len,
            _t: PhantomData,
        })
    }

    /// The whole buffer, read-only.
    pub fn view(&self) -> View<'_, T, D> {
        View {
            ptr: self.alloc.ptr,
            len: self.len,
            ordinal: self.ordinal(),
            alloc: Some(&self.alloc),
            _t: PhantomData,
        }
    }

    /// The whole buffer, writable.
    pub fn view_mut(&mut self) -> ViewMut<'_, T, D> {
        ViewMut {
            ptr: self.alloc.ptr,
            len: self.len,
            ordinal: self.ordinal(),
            alloc: Some(&self.alloc),
            _t: PhantomData,
        }
    }

    /// Queues a copy of `host` (of the buffer's length) into the buffer.
    /// `host` may be reused as soon as this returns.
    pub fn upload(&mut self, stream: &Stream<D>, host: &[T]) -> Result<(), RuntimeError> {
        self.view_mut().upload(stream, host)
    }

    /// Copies the buffer into `host` (of its length): queues the download
    /// and synchronizes `stream`, so `host` holds the data on return.
    pub fn read_into(&self, stream: &Stream<D>, host: &mut [T]) -> Result<(), RuntimeError> {
        self.view().read_into(stream, host)
    }

    /// The buffer's contents, after everything queued before on `stream`.
    pub fn read(&self, stream: &Stream<D>) -> Result<Vec<T>, RuntimeError>
    where
        T: Default + Clone,
    {
        let mut host = vec![T::default(); self.len];
        self.read_into(stream, &mut host)?;
        Ok(host)
    }
}

/// A read-only view of device memory: elements of `T` at an address.
pub struct View<'a, T, D: Driver> {
    ptr: DevicePtr,
    len: usize,
    ordinal: u32,
    alloc: Option<&'a Arc<Alloc<D>>>,
    _t: PhantomData<&'a [T]>,
}

impl<T, D: Driver> Clone for View<'_, T, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, D: Driver> Copy for View<'_, T, D> {}

/// A writable view of device memory.
pub struct ViewMut<'a, T, D: Driver> {
    ptr: DevicePtr,
    len: usize,
    ordinal: u32,
    alloc: Option<&'a Arc<Alloc<D>>>,
    _t: PhantomData<&'a mut [T]>,
}

macro_rules! view_common {
    ($v:ident) => {
        impl<'a, T: Pod, D: Driver> $v<'a, T, D> {
            /// A view of `len` elements at `ptr` on device `gpu`, from memory
            /// attnforge does not own (an engine's own allocator).
            ///
            /// # Safety
            /// `ptr..ptr + len · size_of::<T>()` is device memory of `gpu`,
            /// suitably aligned for `T`, that stays allocated, and that
            /// nothing else writes (or, for a writable view, reads) until
            /// every stream that work using the view was queued on has been
            /// synchronized. attnforge cannot track such memory: the caller
            /// keeps this promise.
            pub unsafe fn from_raw(gpu: &Gpu<D>, ptr: DevicePtr, len: usize) -> Self {
                $v {
                    ptr,
                    len,
                    ordinal: gpu.ordinal(),
                    alloc: None,
                    _t: PhantomData,
                }
            }

            /// Elements viewed.
            pub fn len(&self) -> usize {
                self.len
            }

            /// Whether it views no element.
            pub fn is_empty(&self) -> bool {
                self.len == 0
            }

            /// The device address of its first element.
            pub fn ptr(&self) -> DevicePtr {
                self.ptr
            }

            /// The ordinal of the device it lives on.
            pub fn ordinal(&self) -> u32 {
                self.ordinal
            }

            /// Elements `range` of the view (a typed `Shape` error past it).
            pub fn slice(self, range: std::ops::Range<usize>) -> Result<Self, RuntimeError> {
                if range.start > range.end || range.end > self.len {
                    return Err(RuntimeError::Shape(format!(
                        "elements {range:?} of a view of {}",
                        self.len
                    )));
                }
                Ok($v {
                    ptr: self.ptr.offset(range.start * std::mem::size_of::<T>()),
                    len: range.len(),
                    ..self
                })
            }

            /// Checks the view for a launch on `stream` and records the
            /// use: `what` names it in errors.
            pub(crate) fn arg(
                &self,
                stream: &Stream<D>,
                what: &str,
            ) -> Result<KernelArg, RuntimeError> {
                stream.same_device(what, self.ordinal)?;
                if let Some(a) = self.alloc {
                    stream.use_alloc(a, what)?;
                }
                Ok(KernelArg::Buffer {
                    ptr: self.ptr,
                    bytes: self.len * std::mem::size_of::<T>(),
                })
            }

            /// Copies the viewed elements into `host` (of its length):
            /// queues the download and synchronizes `stream`.
            pub fn read_into(
                &self,
                stream: &Stream<D>,
                host: &mut [T],
            ) -> Result<(), RuntimeError> {
                if host.len() != self.len {
                    return Err(RuntimeError::Shape(format!(
                        "{} elements on the device, {} on the host",
                        self.len,
                        host.len()
                    )));
                }
                {
                    let _submit = stream.submit();
                    self.arg(stream, "download")?;
                    // SAFETY: the view's range is live (tracked by the
                    // stream, or promised by `from_raw`'s caller); `host` is
                    // borrowed exclusively until the synchronize below
                    // returns.
                    unsafe {
                        stream.driver().download(
                            &stream.inner.raw,
                            self.ptr,
                            host.as_mut_ptr().cast(),
                            std::mem::size_of_val(host),
                        )?
                    };
                }
                stream.synchronize()
            }
        }
    };
}
view_common!(View);
view_common!(ViewMut);

impl<'a, T: Pod, D: Driver> ViewMut<'a, T, D> {
    /// A read-only view of the same elements.
    pub fn as_view(&self) -> View<'_, T, D> {
        View {
            ptr: self.ptr,
            len: self.len,
            ordinal: self.ordinal,
            alloc: self.alloc,
            _t: PhantomData,
        }
    }

    /// Reborrows the view (to pass it to a launch and keep it).
    pub fn reborrow(&mut self) -> ViewMut<'_, T, D> {
        ViewMut {
            ptr: self.ptr,
            len: self.len,
            ordinal: self.ordinal,
            alloc: self.alloc,
            _t: PhantomData,
        }
    }

    /// Queues a copy of `host` (of the view's length) into the view.
    pub fn upload(&mut self, stream: &Stream<D>, host: &[T]) -> Result<(), RuntimeError> {
        if host.len() != self.len {
            return Err(RuntimeError::Shape(format!(
                "{} elements on the host for a view of {}",
                host.len(),
                self.len
            )));
        }
        let _submit = stream.submit();
        self.arg(stream, "upload")?;
        // SAFETY: T is Pod, so its bytes are plain data; the range is live
        // (above).
        let bytes = unsafe {
            std::slice::from_raw_parts(host.as_ptr().cast::<u8>(), std::mem::size_of_val(host))
        };
        // SAFETY: the view's range lies in a live allocation.
        unsafe { stream.driver().upload(&stream.inner.raw, self.ptr, bytes)? };
        Ok(())
    }
}

/// Queues a copy of `host` into `view` (memory the launch layer owns and
/// writes only in stream order, as a workspace's plan block).
pub(crate) fn upload_view<T: Pod, D: Driver>(
    stream: &Stream<D>,
    view: View<'_, T, D>,
    host: &[T],
) -> Result<(), RuntimeError> {
    ViewMut {
        ptr: view.ptr,
        len: view.len,
        ordinal: view.ordinal,
        alloc: view.alloc,
        _t: PhantomData,
    }
    .upload(stream, host)
}

/// A view's element type against the dtype a spec asks for.
pub(crate) fn check_elem<T: Element>(
    what: &str,
    want: attnforge_codegen::DType,
) -> Result<(), RuntimeError> {
    if T::DTYPE != want {
        return Err(RuntimeError::ViewDType {
            what: what.to_string(),
            spec: want,
            given: T::DTYPE,
        });
    }
    Ok(())
}
