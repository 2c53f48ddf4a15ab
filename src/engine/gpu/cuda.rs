//! The CUDA backend through `cudarc` (driver API and NVRTC, both loaded at
//! run time): [`Cuda`] opens the device and compiles the kernels; a fit of
//! one series evaluates its batches there directly ([`Cuda`] is a
//! [`Device`]); many fits at once (a simulation) share a [`Batcher`], which
//! gathers the points every fit is waiting on into one launch.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::engine::gpu::pack::{OUT_LEN, Packed, decode_all, ln_2pi};
use crate::engine::gpu::{Device, KERNELS, NoGpu, kernel_source};
use crate::engine::inference::{DIM, Eval, Evaluator, Priors, Theta, prior_center};
use crate::engine::model::{ModelError, Series};

/// Threads a block of the filter kernel: one item a thread, f64 and a few
/// dozen registers each.
const BLOCK: u32 = 128;

/// What `nof1d doctor` shows of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device's name.
    pub name: String,
    /// Its compute capability, `major.minor`.
    pub compute_capability: String,
    /// Memory, bytes.
    pub memory_bytes: usize,
    /// The driver's CUDA version, e.g. `13.0`.
    pub driver: String,
    /// NVRTC's version, e.g. `12.9`.
    pub nvrtc: String,
}

/// The GPU, opened, with the kernels compiled and loaded.
pub struct Cuda {
    /// Kept so that the context outlives the stream and the module.
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    filter: CudaFunction,
    scan: ScanKernels,
    info: DeviceInfo,
    /// One evaluation at a time (a launch sequence and its read-back): the
    /// direct path and a batcher may share the device, and one caller's
    /// read must not wait behind another's launches.
    launch: Mutex<()>,
}

/// The parallel-in-time filter's kernels (`kernels/scan.cu`).
struct ScanKernels {
    setup: CudaFunction,
    chunks: CudaFunction,
    chunk_prefix: CudaFunction,
    apply: CudaFunction,
    gains: CudaFunction,
    terms: CudaFunction,
    sum_chunks: CudaFunction,
    sum_points: CudaFunction,
}

/// A `cudarc` error as [`NoGpu`]'s line.
fn no_gpu(what: &str, e: impl std::fmt::Debug) -> NoGpu {
    NoGpu(format!("{what}: {e:?}"))
}

/// `f`, with a panic (cudarc panics when a library cannot be loaded)
/// turned into [`NoGpu`].
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, NoGpu>) -> Result<T, NoGpu> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "it panicked".into());
            Err(NoGpu(format!(
                "{what}: {}",
                msg.lines().next().unwrap_or("")
            )))
        }
    }
}

/// The kernels compiled to PTX by NVRTC for compute capability `arch`
/// (e.g. `compute_90`), or for NVRTC's default target. No device needed:
/// CI checks that every kernel compiles this way.
pub fn compile_kernels(arch: Option<&'static str>) -> Result<Vec<(&'static str, Ptx)>, NoGpu> {
    guarded("NVRTC could not be loaded", || {
        KERNELS
            .iter()
            .map(|(name, src)| {
                let opts = CompileOptions {
                    // The CPU engine never fuses multiply-adds (see filter.cu).
                    fmad: Some(false),
                    prec_div: Some(true),
                    prec_sqrt: Some(true),
                    ftz: Some(false),
                    arch,
                    ..Default::default()
                };
                cudarc::nvrtc::compile_ptx_with_opts(kernel_source(src), opts)
                    .map(|ptx| (*name, ptx))
                    .map_err(|e| match e {
                        cudarc::nvrtc::CompileError::CompileError { log, .. } => NoGpu(format!(
                            "kernels/{name} does not compile: {}",
                            log.to_string_lossy()
                        )),
                        other => no_gpu(&format!("NVRTC failed on kernels/{name}"), other),
                    })
            })
            .collect()
    })
}

/// NVRTC's version, `major.minor`.
pub fn nvrtc_version() -> Result<String, NoGpu> {
    // SAFETY: probing loads the library and drops it; nothing else runs.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(NoGpu(
            "NVRTC (libnvrtc.so) was not found on the library path".into(),
        ));
    }
    guarded("NVRTC could not be loaded", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: nvrtcVersion writes two ints through the pointers given.
        let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        if r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
            Ok(format!("{major}.{minor}"))
        } else {
            Err(no_gpu("NVRTC's version", r))
        }
    })
}

/// The driver's CUDA version, `major.minor`.
fn driver_version() -> Result<String, NoGpu> {
    let mut v = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer given.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if r == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
    } else {
        Err(no_gpu("the driver's version", r))
    }
}

impl Cuda {
    /// Opens device 0 and compiles the kernels for it.
    pub fn open() -> Result<Cuda, NoGpu> {
        // SAFETY: probing loads the library and drops it; nothing else runs.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(NoGpu("no CUDA driver (libcuda.so) on this machine".into()));
        }
        guarded("the CUDA driver could not be used", || {
            let ctx = CudaContext::new(0).map_err(|e| no_gpu("no CUDA device", e))?;
            // SAFETY: every copy and launch goes to the context's one
            // default stream, which runs them in the order issued, so
            // cudarc's per-buffer events (for ordering across streams) are
            // not needed; they cost a record and a wait on every use.
            unsafe { ctx.disable_event_tracking() };
            let (major, minor) = ctx
                .compute_capability()
                .map_err(|e| no_gpu("the device's compute capability", e))?;
            let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
            let nvrtc = nvrtc_version()?;
            let ptx = compile_kernels(Some(arch))?;
            let mut functions = std::collections::HashMap::new();
            for (name, ptx) in ptx {
                let module = ctx
                    .load_module(ptx)
                    .map_err(|e| no_gpu(&format!("kernels/{name} does not load"), e))?;
                let names: &[&str] = match name {
                    "filter.cu" => &["filter_batch"],
                    _ => &[
                        "scan_setup",
                        "scan_chunks",
                        "scan_chunk_prefix",
                        "scan_apply",
                        "scan_gains",
                        "scan_terms",
                        "sum_chunks",
                        "sum_points",
                    ],
                };
                for f in names {
                    let function = module
                        .load_function(f)
                        .map_err(|e| no_gpu(&format!("kernels/{name}: {f}"), e))?;
                    functions.insert(*f, function);
                }
            }
            let mut take = |f: &str| {
                functions
                    .remove(f)
                    .ok_or_else(|| NoGpu(format!("the kernel {f} is missing")))
            };
            let filter = take("filter_batch")?;
            let scan = ScanKernels {
                setup: take("scan_setup")?,
                chunks: take("scan_chunks")?,
                chunk_prefix: take("scan_chunk_prefix")?,
                apply: take("scan_apply")?,
                gains: take("scan_gains")?,
                terms: take("scan_terms")?,
                sum_chunks: take("sum_chunks")?,
                sum_points: take("sum_points")?,
            };
            let driver = driver_version()?;
            let info = DeviceInfo {
                name: ctx.name().map_err(|e| no_gpu("the device's name", e))?,
                compute_capability: format!("{major}.{minor}"),
                memory_bytes: ctx
                    .total_mem()
                    .map_err(|e| no_gpu("the device's memory", e))?,
                driver,
                nvrtc,
            };
            Ok(Cuda {
                stream: ctx.default_stream(),
                _ctx: ctx,
                filter,
                scan,
                info,
                launch: Mutex::new(()),
            })
        })
    }

    /// What the device is.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Copies `packed` to the device (for many launches over it).
    fn upload(&self, packed: &Packed) -> Result<DevicePacked, ModelError> {
        let err = |e: cudarc::driver::DriverError| ModelError::Device(format!("copy: {e:?}"));
        Ok(DevicePacked {
            meta: self.stream.clone_htod(packed.meta()).map_err(err)?,
            ints: self
                .stream
                .clone_htod(&nonempty_i32(packed.ints()))
                .map_err(err)?,
            reals: self
                .stream
                .clone_htod(&nonempty_f64(packed.reals()))
                .map_err(err)?,
        })
    }

    /// `filter_batch` for `items` (packed series index, point) over
    /// `series` already on the device: the raw outputs, `OUT_LEN` an item.
    fn run_filter(
        &self,
        series: &DevicePacked,
        items: &[(u32, Theta)],
    ) -> Result<Vec<f64>, ModelError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let err = |e: cudarc::driver::DriverError| ModelError::Device(format!("launch: {e:?}"));
        let index: Vec<i32> = items.iter().map(|(s, _)| *s as i32).collect();
        let thetas: Vec<f64> = items.iter().flat_map(|(_, t)| *t).collect();
        let count = items.len();
        let _one = self.launch.lock().unwrap_or_else(|p| p.into_inner());
        let index_d = self.stream.clone_htod(&index).map_err(err)?;
        let thetas_d = self.stream.clone_htod(&thetas).map_err(err)?;
        let mut out_d = self
            .stream
            .alloc_zeros::<f64>(count * OUT_LEN)
            .map_err(err)?;
        let items_i64 = count as i64;
        let ln2pi = ln_2pi();
        let blocks = count.div_ceil(BLOCK as usize) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.filter);
        launch
            .arg(&series.meta)
            .arg(&series.ints)
            .arg(&series.reals)
            .arg(&index_d)
            .arg(&thetas_d)
            .arg(&items_i64)
            .arg(&ln2pi)
            .arg(&mut out_d);
        // SAFETY: the arguments are those `filter_batch` declares, in its
        // order; every series index was packed; `out_d` holds OUT_LEN
        // doubles an item and `thetas_d` 4.
        unsafe { launch.launch(cfg) }.map_err(err)?;
        self.stream.clone_dtoh(&out_d).map_err(err)
    }

    /// `filter_batch` on `packed` for `items`, decoded (uploads the series
    /// first: one launch).
    pub fn filter_batch(
        &self,
        packed: &Packed,
        items: &[(u32, Theta)],
    ) -> Result<Vec<Option<Eval>>, ModelError> {
        // The kernel reads each item's series header: every index must be packed.
        if items.iter().any(|(s, _)| *s as usize >= packed.len()) {
            return Err(ModelError::Input(
                "a GPU item names a series that is not packed".into(),
            ));
        }
        let on_device = self.upload(packed)?;
        let out = self.run_filter(&on_device, items)?;
        Ok(decode_all(packed, items, &out))
    }
}

/// The device refuses empty copies: an empty array travels as one zero.
fn nonempty_i32(v: &[i32]) -> Vec<i32> {
    if v.is_empty() { vec![0] } else { v.to_vec() }
}

fn nonempty_f64(v: &[f64]) -> Vec<f64> {
    if v.is_empty() { vec![0.0] } else { v.to_vec() }
}

/// Packed series on the device.
struct DevicePacked {
    meta: CudaSlice<i32>,
    ints: CudaSlice<i32>,
    reals: CudaSlice<f64>,
}

/// One series on the device: its batches are launched directly.
struct CudaSeries<'s> {
    cuda: &'s Cuda,
    packed: Packed,
    on_device: DevicePacked,
    priors: &'s Priors,
}

impl Evaluator for CudaSeries<'_> {
    fn dims(&self) -> usize {
        DIM
    }

    fn start(&self) -> Theta {
        prior_center(&self.priors.hyper)
    }

    fn eval(&self, theta: &Theta) -> Option<Eval> {
        self.eval_batch(std::slice::from_ref(theta), 1)
            .pop()
            .flatten()
    }

    fn eval_batch(&self, thetas: &[Theta], _threads: usize) -> Vec<Option<Eval>> {
        let items: Vec<(u32, Theta)> = thetas.iter().map(|t| (0, *t)).collect();
        match self.cuda.run_filter(&self.on_device, &items) {
            Ok(out) => decode_all(&self.packed, &items, &out),
            Err(e) => {
                tracing::warn!(error = %e, "GPU evaluation failed");
                vec![None; thetas.len()]
            }
        }
    }

    fn min_split(&self) -> usize {
        usize::MAX
    }
}

impl Device for Cuda {
    /// The parallel-in-time filter from [`crate::engine::gpu::SCAN_FROM_OBSERVATIONS`]
    /// on, the sequential kernel below.
    fn gaussian<'s>(
        &'s self,
        series: &'s Series,
        priors: &'s Priors,
    ) -> Result<Box<dyn Evaluator + 's>, ModelError> {
        self.gaussian_with(series, priors, crate::engine::gpu::Filter::Auto)
    }

    fn gaussian_with<'s>(
        &'s self,
        series: &'s Series,
        priors: &'s Priors,
        filter: crate::engine::gpu::Filter,
    ) -> Result<Box<dyn Evaluator + 's>, ModelError> {
        use crate::engine::gpu::Filter;
        let scan = match filter {
            Filter::Auto => series.t.len() >= crate::engine::gpu::SCAN_FROM_OBSERVATIONS,
            Filter::Sequential => false,
            Filter::Scan => true,
        };
        if scan {
            self.scan_evaluator(series, priors)
        } else {
            self.sequential_evaluator(series, priors)
        }
    }
}

/// One fit's batch waiting for the device.
struct Request {
    packed: Arc<Packed>,
    thetas: Vec<Theta>,
    reply: SyncSender<Vec<Option<Eval>>>,
}

/// Many fits on one device: each fit's evaluator sends its batch here and
/// waits; a dispatcher thread gathers the batches of every waiting fit
/// (until all are waiting, or [`GATHER`] has passed) and evaluates them in
/// one launch. A simulation runs thousands of fits on as many threads.
pub struct Batcher {
    requests: Mutex<Option<Sender<Request>>>,
    /// Evaluators alive: the dispatcher launches once this many wait.
    active: Arc<AtomicUsize>,
    dispatcher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How long the dispatcher waits for more fits' batches before launching
/// what it has: a fit's mode search sends one point at a time, hundreds of
/// times over, so each round's wait is paid hundreds of times a fit.
const GATHER: Duration = Duration::from_micros(50);

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// A batcher over `cuda`, its dispatcher started.
    pub fn new(cuda: Arc<Cuda>) -> Result<Batcher, NoGpu> {
        let (tx, rx) = mpsc::channel::<Request>();
        let active = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&active);
        let dispatcher = std::thread::Builder::new()
            .name("nof1d-gpu".into())
            .spawn(move || dispatch(&cuda, &rx, &seen))
            .map_err(|e| NoGpu(format!("the GPU's dispatcher thread could not start: {e}")))?;
        Ok(Batcher {
            requests: Mutex::new(Some(tx)),
            active,
            dispatcher: Mutex::new(Some(dispatcher)),
        })
    }

    /// Stops the dispatcher (after the batches in flight). Only on drop: the dispatcher ends when every evaluator's sender
    /// is gone too, and evaluators borrow the batcher, so none is left then.
    fn finish(&self) {
        if let Ok(mut r) = self.requests.lock() {
            r.take();
        }
        let handle = self.dispatcher.lock().ok().and_then(|mut d| d.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The dispatcher's loop: gather, pack, launch, answer.
fn dispatch(cuda: &Cuda, rx: &Receiver<Request>, active: &AtomicUsize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let started = Instant::now();
        loop {
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
            if batch.len() >= active.load(Ordering::Acquire) || started.elapsed() >= GATHER {
                break;
            }
            match rx.recv_timeout(GATHER.saturating_sub(started.elapsed())) {
                Ok(r) => batch.push(r),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut packed = Packed::new();
        let mut items = Vec::new();
        let mut ranges = Vec::with_capacity(batch.len());
        for r in &batch {
            let Ok(s) = packed.append(&r.packed) else {
                tracing::warn!("GPU batch too large for its offsets");
                break;
            };
            let from = items.len();
            items.extend(r.thetas.iter().map(|t| (s, *t)));
            ranges.push(from..items.len());
        }
        let results = cuda.filter_batch(&packed, &items).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "GPU batch failed");
            vec![None; items.len()]
        });
        for (r, range) in batch.into_iter().zip(ranges) {
            let _ = r.reply.send(results[range].to_vec());
        }
    }
}

/// One fit's evaluator under a [`Batcher`].
struct Batched {
    requests: Sender<Request>,
    packed: Arc<Packed>,
    priors_center: Theta,
    active: Arc<AtomicUsize>,
}

impl Drop for Batched {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Evaluator for Batched {
    fn dims(&self) -> usize {
        DIM
    }

    fn start(&self) -> Theta {
        self.priors_center
    }

    fn eval(&self, theta: &Theta) -> Option<Eval> {
        self.eval_batch(std::slice::from_ref(theta), 1)
            .pop()
            .flatten()
    }

    fn eval_batch(&self, thetas: &[Theta], _threads: usize) -> Vec<Option<Eval>> {
        let (reply, answer) = mpsc::sync_channel(1);
        let request = Request {
            packed: Arc::clone(&self.packed),
            thetas: thetas.to_vec(),
            reply,
        };
        if self.requests.send(request).is_err() {
            return vec![None; thetas.len()];
        }
        answer.recv().unwrap_or_else(|_| vec![None; thetas.len()])
    }

    fn min_split(&self) -> usize {
        usize::MAX
    }
}

impl Device for Batcher {
    fn gaussian<'s>(
        &'s self,
        series: &'s Series,
        priors: &'s Priors,
    ) -> Result<Box<dyn Evaluator + 's>, ModelError> {
        let requests = self
            .requests
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .ok_or_else(|| ModelError::Input("the GPU batcher has stopped".into()))?;
        let mut packed = Packed::new();
        packed.push(series, priors)?;
        self.active.fetch_add(1, Ordering::AcqRel);
        Ok(Box::new(Batched {
            requests,
            packed: Arc::new(packed),
            priors_center: prior_center(&priors.hyper),
            active: Arc::clone(&self.active),
        }))
    }
}

/// Threads a block of the scan's elementwise kernels.
const SCAN_BLOCK: u32 = 256;

/// The scan's kernels on the device ([`crate::engine::gpu::scan::ScanOps`]).
struct CudaOps<'a>(&'a Cuda);

impl CudaOps<'_> {
    fn cfg(count: i64) -> LaunchConfig {
        let blocks = (count.max(1) as u64).div_ceil(u64::from(SCAN_BLOCK)) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (SCAN_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

fn launch_error(e: cudarc::driver::DriverError) -> ModelError {
    ModelError::Device(format!("launch: {e:?}"))
}

impl crate::engine::gpu::scan::ScanOps for CudaOps<'_> {
    type F = CudaSlice<f64>;
    type I = CudaSlice<i32>;
    fn zeros(&self, len: usize) -> Result<CudaSlice<f64>, ModelError> {
        self.0
            .stream
            .alloc_zeros::<f64>(len.max(1))
            .map_err(launch_error)
    }
    fn f64s(&self, v: &[f64]) -> Result<CudaSlice<f64>, ModelError> {
        self.0
            .stream
            .clone_htod(&nonempty_f64(v))
            .map_err(launch_error)
    }
    fn i32s(&self, v: &[i32]) -> Result<CudaSlice<i32>, ModelError> {
        self.0
            .stream
            .clone_htod(&nonempty_i32(v))
            .map_err(launch_error)
    }
    fn read(&self, b: &CudaSlice<f64>, len: usize) -> Result<Vec<f64>, ModelError> {
        let mut all = self.0.stream.clone_dtoh(b).map_err(launch_error)?;
        all.truncate(len);
        Ok(all)
    }
    fn setup(
        &self,
        n: i64,
        batch: i64,
        thetas: &CudaSlice<f64>,
        gap: &CudaSlice<f64>,
        step_start: &CudaSlice<i32>,
        piece_len: &CudaSlice<f64>,
        piece_arm: &CudaSlice<i32>,
        p: i32,
        mob: &mut CudaSlice<f64>,
        wmap: &mut CudaSlice<f64>,
    ) -> Result<(), ModelError> {
        let mut l = self.0.stream.launch_builder(&self.0.scan.setup);
        l.arg(&n)
            .arg(&batch)
            .arg(thetas)
            .arg(gap)
            .arg(step_start)
            .arg(piece_len)
            .arg(piece_arm)
            .arg(&p)
            .arg(mob)
            .arg(wmap);
        // SAFETY: the arguments are scan_setup's, in order; `scan::sums`
        // sized every buffer for n elements of `batch` points.
        unsafe { l.launch(Self::cfg(n * batch)) }
            .map(drop)
            .map_err(launch_error)
    }
    fn chunks(
        &self,
        n: i64,
        batch: i64,
        chunk: i64,
        kind: i32,
        width: i32,
        elems: &CudaSlice<f64>,
        totals: &mut CudaSlice<f64>,
    ) -> Result<(), ModelError> {
        let mut l = self.0.stream.launch_builder(&self.0.scan.chunks);
        l.arg(&n)
            .arg(&batch)
            .arg(&chunk)
            .arg(&kind)
            .arg(&width)
            .arg(elems)
            .arg(totals);
        // SAFETY: scan_chunks's arguments, sized by `scan::prefix_in_place`.
        unsafe { l.launch(Self::cfg((n + chunk - 1) / chunk * batch)) }
            .map(drop)
            .map_err(launch_error)
    }
    fn chunk_prefix(
        &self,
        chunks: i64,
        batch: i64,
        kind: i32,
        width: i32,
        totals: &mut CudaSlice<f64>,
    ) -> Result<(), ModelError> {
        let mut l = self.0.stream.launch_builder(&self.0.scan.chunk_prefix);
        l.arg(&chunks)
            .arg(&batch)
            .arg(&kind)
            .arg(&width)
            .arg(totals);
        // SAFETY: scan_chunk_prefix's arguments, sized by `scan::prefix_in_place`.
        unsafe { l.launch(Self::cfg(batch)) }
            .map(drop)
            .map_err(launch_error)
    }
    fn apply(
        &self,
        n: i64,
        batch: i64,
        chunk: i64,
        kind: i32,
        width: i32,
        prefixes: &CudaSlice<f64>,
        elems: &mut CudaSlice<f64>,
    ) -> Result<(), ModelError> {
        let mut l = self.0.stream.launch_builder(&self.0.scan.apply);
        l.arg(&n)
            .arg(&batch)
            .arg(&chunk)
            .arg(&kind)
            .arg(&width)
            .arg(prefixes)
            .arg(elems);
        // SAFETY: scan_apply's arguments, sized by `scan::prefix_in_place`.
        unsafe { l.launch(Self::cfg((n + chunk - 1) / chunk * batch)) }
            .map(drop)
            .map_err(launch_error)
    }
    fn gains(
        &self,
        n: i64,
        batch: i64,
        thetas: &CudaSlice<f64>,
        gap: &CudaSlice<f64>,
        y: &CudaSlice<f64>,
        p: i32,
        effect_arm: &CudaSlice<i32>,
        mob_prefix: &CudaSlice<f64>,
        w_prefix: &CudaSlice<f64>,
        fr: &mut CudaSlice<f64>,
        means: &mut CudaSlice<f64>,
    ) -> Result<(), ModelError> {
        let mut l = self.0.stream.launch_builder(&self.0.scan.gains);
        l.arg(&n)
            .arg(&batch)
            .arg(thetas)
            .arg(gap)
            .arg(y)
            .arg(&p)
            .arg(effect_arm)
            .arg(mob_prefix)
            .arg(w_prefix)
            .arg(fr)
            .arg(means);
        // SAFETY: scan_gains's arguments, sized by `scan::sums`.
        unsafe { l.launch(Self::cfg(n * batch)) }
            .map(drop)
            .map_err(launch_error)
    }
    fn terms(
        &self,
        n: i64,
        batch: i64,
        y: &CudaSlice<f64>,
        p: i32,
        effect_arm: &CudaSlice<i32>,
        w_prefix: &CudaSlice<f64>,
        means_prefix: &CudaSlice<f64>,
        fr: &CudaSlice<f64>,
        terms: &mut CudaSlice<f64>,
    ) -> Result<(), ModelError> {
        let mut l = self.0.stream.launch_builder(&self.0.scan.terms);
        l.arg(&n)
            .arg(&batch)
            .arg(y)
            .arg(&p)
            .arg(effect_arm)
            .arg(w_prefix)
            .arg(means_prefix)
            .arg(fr)
            .arg(terms);
        // SAFETY: scan_terms's arguments, sized by `scan::sums`.
        unsafe { l.launch(Self::cfg(n * batch)) }
            .map(drop)
            .map_err(launch_error)
    }
    fn sum_chunks(
        &self,
        n: i64,
        batch: i64,
        chunk: i64,
        width: i32,
        terms: &CudaSlice<f64>,
        partial: &mut CudaSlice<f64>,
    ) -> Result<(), ModelError> {
        let mut l = self.0.stream.launch_builder(&self.0.scan.sum_chunks);
        l.arg(&n)
            .arg(&batch)
            .arg(&chunk)
            .arg(&width)
            .arg(terms)
            .arg(partial);
        // SAFETY: sum_chunks's arguments, sized by `scan::sums`.
        unsafe { l.launch(Self::cfg((n + chunk - 1) / chunk * batch)) }
            .map(drop)
            .map_err(launch_error)
    }
    fn sum_points(
        &self,
        chunks: i64,
        batch: i64,
        width: i32,
        partial: &CudaSlice<f64>,
        totals: &mut CudaSlice<f64>,
    ) -> Result<(), ModelError> {
        let mut l = self.0.stream.launch_builder(&self.0.scan.sum_points);
        l.arg(&chunks)
            .arg(&batch)
            .arg(&width)
            .arg(partial)
            .arg(totals);
        // SAFETY: sum_points's arguments, sized by `scan::sums`.
        unsafe { l.launch(Self::cfg(batch)) }
            .map(drop)
            .map_err(launch_error)
    }
}

/// The share of the device's memory the scan may take at once: its batches
/// of points are cut to fit (a 100,000-day series takes about 22 MB a
/// point for two arms).
const SCAN_MEMORY_SHARE: usize = 4;

/// One long series evaluated by the parallel-in-time filter.
struct ScanSeriesEvaluator<'s> {
    cuda: &'s Cuda,
    scan: crate::engine::gpu::scan::ScanSeries,
    uploaded: crate::engine::gpu::scan::Uploaded<CudaOps<'s>>,
    series: &'s Series,
    priors: &'s Priors,
}

impl Evaluator for ScanSeriesEvaluator<'_> {
    fn dims(&self) -> usize {
        DIM
    }

    fn start(&self) -> Theta {
        prior_center(&self.priors.hyper)
    }

    fn eval(&self, theta: &Theta) -> Option<Eval> {
        self.eval_batch(std::slice::from_ref(theta), 1)
            .pop()
            .flatten()
    }

    fn eval_batch(&self, thetas: &[Theta], _threads: usize) -> Vec<Option<Eval>> {
        let per_batch = (self.cuda.info.memory_bytes
            / SCAN_MEMORY_SHARE
            / self.scan.bytes_per_step().max(1)
            / self.scan.len().max(1))
        .max(1);
        let ops = CudaOps(self.cuda);
        let _one = self.cuda.launch.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(thetas.len());
        for part in thetas.chunks(per_batch) {
            match crate::engine::gpu::scan::evaluate(
                &ops,
                &self.scan,
                &self.uploaded,
                self.series,
                self.priors,
                part,
            ) {
                Ok(evals) => out.extend(evals),
                Err(e) => {
                    tracing::warn!(error = %e, "GPU scan failed");
                    out.extend(std::iter::repeat_n(None, part.len()));
                }
            }
        }
        out
    }

    fn min_split(&self) -> usize {
        usize::MAX
    }
}

impl Cuda {
    /// An evaluator of `series` by the parallel-in-time filter
    /// (`kernels/scan.cu`), whatever its length: [`Device::gaussian`]
    /// chooses it for long series.
    pub fn scan_evaluator<'s>(
        &'s self,
        series: &'s Series,
        priors: &'s Priors,
    ) -> Result<Box<dyn Evaluator + 's>, ModelError> {
        let scan = crate::engine::gpu::scan::ScanSeries::of(series)?;
        let uploaded = crate::engine::gpu::scan::upload(&CudaOps(self), &scan)?;
        Ok(Box::new(ScanSeriesEvaluator {
            cuda: self,
            scan,
            uploaded,
            series,
            priors,
        }))
    }

    /// An evaluator of `series` by the sequential filter kernel
    /// (`kernels/filter.cu`), one thread a point.
    pub fn sequential_evaluator<'s>(
        &'s self,
        series: &'s Series,
        priors: &'s Priors,
    ) -> Result<Box<dyn Evaluator + 's>, ModelError> {
        let mut packed = Packed::new();
        packed.push(series, priors)?;
        let on_device = self.upload(&packed)?;
        Ok(Box::new(CudaSeries {
            cuda: self,
            packed,
            on_device,
            priors,
        }))
    }
}
