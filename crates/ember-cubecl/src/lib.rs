//! Ember's fused ops as CubeCL kernels, written once for every burn backend built on CubeCL:
//! CUDA (`ember-cuda`), Vulkan through SPIR-V and Metal through MSL (`ember-wgpu`).
//!
//! The ops run on any [`CubeHost`]: burn's `Wgpu` and `Cuda` (`Fusion<CubeBackend<R, ..>>`,
//! where each op is a custom operation in burn-fusion's lazily executed stream: nothing is
//! flushed or read back, and a custom op is a fusion barrier), and a bare `CubeBackend`,
//! where each op launches at once on the caller's thread.
//!
//! The element type is the tensors' run-time dtype (Ember picks f32 or f16 per run), not the
//! backend's `F` type parameter. Every kernel accumulates in f32.
//!
//! Ops: [`FusedOps::rms_norm`] (one kernel instead of the portable cast, square, mean,
//! divide, cast, multiply), [`FusedOps::add_rms_norm`] (a residual add and the norm that
//! reads it), [`FusedOps::gated`] (a gated MLP's activation and product: one kernel instead of
//! an element-wise block and a product), [`FusedOps::gated_linear`] (the same activation as
//! the prologue of a decode step's down projection: one matrix-vector kernel instead of the
//! activation and a matmul), [`FusedOps::rope_write`] (RoPE of a step's q and k with the cache write of k
//! and v: one kernel instead of ~5), [`FusedOps::decode_attention`] (one token's query heads
//! over the cache's real length, no bias, GQA by index) and [`FusedOps::attention`] for the
//! short query rows of a step that has a bias (one kernel instead of matmul, softmax and
//! matmul), [`FusedOps::linear`] (a decode step's dense projection as one matrix-vector
//! kernel instead of burn's matmul), [`FusedOps::add_rms_norm_linear`] (add + RMSNorm as
//! that kernel's prologue) and [`FusedOps::rope_write_packed`] (RoPE-write of the projection
//! before its split into heads), each compared with the portable path by this crate's tests
//! on wgpu.

#![warn(missing_docs)]
// Bad input must come back as `None` (the portable path), never a panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod kernels;
mod quantized;

pub use burn_cubecl::CubeBackend;
pub use quantized::{CubeQuantized, STAGE_BYTES};

use std::marker::PhantomData;

use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use cubecl::prelude::{CubeCount, CubeDim};
use cubecl::zspace::metadata::Metadata;
use cubecl::zspace::Strides;
use ember::nn::{FusedOps, Gate, RopeWritten};

use kernels::{BLOCK, MAX_HEAD_DIM};

/// burn's fusion wrapper over a CubeCL backend (`Wgpu`, `Cuda`).
pub type FusedCube<R, F, I, BT> = Fusion<CubeBackend<R, F, I, BT>>;

/// Query rows per attention call above which [`FusedOps::attention`] declines: the kernel
/// is written for decode (one token's query heads, grouped per KV head); a prompt's rows go
/// to burn's flash attention.
pub const MAX_QUERY_ROWS: usize = 32;

/// Rows (`batch * seq`) above which [`FusedOps::gated_linear`] declines: its kernel reads
/// the weight once per row, which suits a decode step; a prompt's rows go to the gated
/// kernel and burn's autotuned matmul.
pub const MAX_MATVEC_ROWS: usize = 4;

/// Vectors of output columns per cube of the matrix-vector kernel ([`kernels::matvec`]):
/// 4 vectors of 4 columns (32 bytes of a row of f16 weights per read of a plane's units
/// that share a feature), and [`BLOCK`] / 4 parts of the input features per cube.
const MATVEC_LANES: usize = 4;

/// Columns per vector of [`kernels::matvec`] where the output width allows: 8 (f16) or 16
/// (f32) bytes per weight load, a width every CubeCL target vectorizes.
const MATVEC_WIDTH: usize = 4;

/// The CubeCL fused ops of one backend (`R`: its CubeCL runtime).
pub struct CubeFused<R> {
    _runtime: PhantomData<fn() -> R>,
}

impl<R> CubeFused<R> {
    /// The ops, for any device of runtime `R`.
    pub fn new() -> Self {
        Self {
            _runtime: PhantomData,
        }
    }
}

impl<R> Default for CubeFused<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> std::fmt::Debug for CubeFused<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CubeFused")
    }
}

/// The environment variable that turns the kernels off (`EMBER_CUBECL=off`: burn's ops
/// only), to compare the two paths in one build.
pub const ENV_SWITCH: &str = "EMBER_CUBECL";

/// The ops for a backend's [`ember::Capabilities::fused`], the runtime inferred from the
/// backend type (`Wgpu`, `Cuda`, a bare `CubeBackend`); `None` when [`ENV_SWITCH`] is `off`.
pub fn fused<B: CubeHost>() -> Option<ember::nn::Fused<B>> {
    if std::env::var(ENV_SWITCH).is_ok_and(|v| v.eq_ignore_ascii_case("off")) {
        return None;
    }
    Some(ember::nn::Fused(std::sync::Arc::new(
        CubeFused::<B::Runtime>::new(),
    )))
}

/// A burn backend on a CubeCL runtime whose float tensors the kernels here take, and how an
/// op reaches the device on it.
///
/// - burn's `Wgpu` and `Cuda` are `Fusion<CubeBackend<R, ..>>`: tensors are handles in a
///   lazily executed stream of operations, which burn-fusion's own thread walks. The op is
///   registered in that stream as a custom operation (the way burn-vision 0.21 adds its
///   CubeCL kernels), so nothing is flushed or read back: when the stream reaches it,
///   [`burn_fusion::stream::Operation::execute`] takes the inputs' `CubeTensor`s, launches
///   the kernel, and registers the outputs. A custom op is a fusion barrier.
/// - A bare `CubeBackend<R, ..>` (what `ember-cuda` runs: change 44 in docs/performance.md)
///   launches the kernel at once, on the caller's thread: no stream, no description of the
///   op, no second thread between the caller and CubeCL's device thread.
pub trait CubeHost: Backend {
    /// The CubeCL runtime under the backend.
    type Runtime: CubeRuntime;

    /// The op named `name` on `inputs`: `run` launches it on their `CubeTensor`s and returns
    /// its `M` outputs, of the given shapes and dtypes, in that order.
    fn launch<const N: usize, const M: usize>(
        name: &'static str,
        inputs: [Self::FloatTensorPrimitive; N],
        outputs: [(Vec<usize>, DType); M],
        run: impl Fn([CubeTensor<Self::Runtime>; N]) -> [CubeTensor<Self::Runtime>; M]
            + Send
            + Sync
            + 'static,
    ) -> [Self::FloatTensorPrimitive; M];

    /// An int tensor's primitive as an input of [`CubeHost::launch`] (the same `CubeTensor`
    /// or fusion handle: the kernels read its words).
    fn int_input(t: Self::IntTensorPrimitive) -> Self::FloatTensorPrimitive;
}

impl<R, F, I, BT> CubeHost for FusedCube<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    type Runtime = R;

    fn launch<const N: usize, const M: usize>(
        name: &'static str,
        inputs: [FusionTensor<FusionCubeRuntime<R>>; N],
        outputs: [(Vec<usize>, DType); M],
        run: impl Fn([CubeTensor<R>; N]) -> [CubeTensor<R>; M] + Send + Sync + 'static,
    ) -> [FusionTensor<FusionCubeRuntime<R>>; M] {
        let client = inputs[0].client.clone();
        let streams = OperationStreams::with_inputs(inputs.iter());
        let outputs = outputs.map(|(shape, dtype)| {
            TensorIr::uninit(
                client.create_empty_handle(),
                burn::tensor::Shape::from(shape),
                dtype,
            )
        });
        let inputs = inputs.map(FusionTensor::into_ir);
        let desc = CustomOpIr::new(name, &inputs, &outputs);
        let op = CustomOp::<R, F, I, BT, N, M> {
            desc: desc.clone(),
            run: Box::new(run),
            _backend: PhantomData,
        };
        let outputs = client.register(streams, OperationIr::Custom(desc), op);
        let mut outputs = outputs.into_iter();
        // `register` returns one tensor per output of the description, in its order.
        std::array::from_fn(|_| match outputs.next() {
            Some(t) => t,
            None => unreachable!("burn-fusion returned fewer outputs than registered"),
        })
    }

    fn int_input(t: FusionTensor<FusionCubeRuntime<R>>) -> FusionTensor<FusionCubeRuntime<R>> {
        t
    }
}

impl<R, F, I, BT> CubeHost for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    type Runtime = R;

    fn launch<const N: usize, const M: usize>(
        name: &'static str,
        inputs: [CubeTensor<R>; N],
        outputs: [(Vec<usize>, DType); M],
        run: impl Fn([CubeTensor<R>; N]) -> [CubeTensor<R>; M] + Send + Sync + 'static,
    ) -> [CubeTensor<R>; M] {
        let ys = run(inputs);
        // What the fusion stream is told the op makes is what it makes (checked in tests).
        for ((shape, dtype), y) in outputs.iter().zip(&ys) {
            debug_assert!(
                y.meta.shape().as_slice() == shape.as_slice() && y.dtype == *dtype,
                "{name}: made {:?} {:?}, declared {shape:?} {dtype:?}",
                y.meta.shape(),
                y.dtype
            );
        }
        ys
    }

    fn int_input(t: CubeTensor<R>) -> CubeTensor<R> {
        t
    }
}

/// The primitive behind a float tensor (`None` for a quantized one).
fn float<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<B::FloatTensorPrimitive> {
    match t.clone().into_primitive() {
        TensorPrimitive::Float(t) => Some(t),
        TensorPrimitive::QFloat(_) => None,
    }
}

/// Whether the kernels here take `dtype`.
fn float_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// [`CubeHost::launch`] of an op with one output of `shape` and `dtype`.
fn register<R, B, const N: usize>(
    name: &'static str,
    inputs: [B::FloatTensorPrimitive; N],
    shape: Vec<usize>,
    dtype: DType,
    run: impl Fn([CubeTensor<R>; N]) -> CubeTensor<R> + Send + Sync + 'static,
) -> B::FloatTensorPrimitive
where
    R: CubeRuntime,
    B: CubeHost<Runtime = R>,
{
    let [out] = B::launch(name, inputs, [(shape, dtype)], move |inputs| [run(inputs)]);
    out
}

type Launch<R, const N: usize, const M: usize> =
    Box<dyn Fn([CubeTensor<R>; N]) -> [CubeTensor<R>; M] + Send + Sync>;

/// The backend's element types, which the op names when it fetches its tensors.
type Elements<F, I, BT> = PhantomData<fn() -> (F, I, BT)>;

/// A custom op in a fusion stream: `N` float inputs, `M` float outputs made by `run`.
struct CustomOp<R: CubeRuntime, F, I, BT, const N: usize, const M: usize> {
    desc: CustomOpIr,
    run: Launch<R, N, M>,
    _backend: Elements<F, I, BT>,
}

impl<R: CubeRuntime, F, I, BT, const N: usize, const M: usize> std::fmt::Debug
    for CustomOp<R, F, I, BT, N, M>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomOp")
            .field("id", &self.desc.id)
            .finish()
    }
}

impl<R, F, I, BT, const N: usize, const M: usize> Operation<FusionCubeRuntime<R>>
    for CustomOp<R, F, I, BT, N, M>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn execute(
        &self,
        handles: &mut HandleContainer<
            <FusionCubeRuntime<R> as burn_fusion::FusionRuntime>::FusionHandle,
        >,
    ) {
        let (inputs, outputs) = self.desc.as_fixed::<N, M>();
        let tensors = std::array::from_fn(|i| {
            handles.get_float_tensor::<CubeBackend<R, F, I, BT>>(&inputs[i])
        });
        let ys = (self.run)(tensors);
        for (out, y) in outputs.iter().zip(ys) {
            handles.register_float_tensor::<CubeBackend<R, F, I, BT>>(&out.id, y);
        }
    }
}

/// A KV cache's keys and values.
type CachePair<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// The primitives behind several float tensors, or `None` if one is quantized.
trait TryMapFloat<B: Backend, const N: usize> {
    fn try_map_float(self) -> Option<[B::FloatTensorPrimitive; N]>;
}

impl<B: Backend, const N: usize> TryMapFloat<B, N> for [&Tensor<B, 4>; N] {
    fn try_map_float(self) -> Option<[B::FloatTensorPrimitive; N]> {
        let all: Vec<_> = self.iter().map(|t| float(*t)).collect::<Option<_>>()?;
        all.try_into().ok()
    }
}

/// `t` where a kernel may write it in place (the only handle, no overlapping elements), else
/// a copy (as burn's `slice_assign` does).
fn writable<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.can_mut() && t.is_nonoverlapping() {
        t
    } else {
        t.copy()
    }
}

/// A checked [`FusedOps::rope_write`]: the shapes agree, every index the kernel computes is
/// inside its tensor, and the grid fits.
#[derive(Debug, Clone)]
struct RopeWrite {
    dtype: DType,
    /// `[b, heads, seq, d]`, the rotated queries' shape.
    q_shape: Vec<usize>,
    /// Cubes per token, tokens, batch rows.
    grid: (u32, u32, u32),
    /// Each batch row's (cache row, start), when they are not `(row0 + b, start0)`.
    per_row: Option<Vec<u32>>,
    row0: u32,
    start0: u32,
}

impl RopeWrite {
    /// The cube's width: each unit one element of a token's heads.
    const BLOCK: usize = 256;

    #[allow(clippy::too_many_arguments)]
    fn plan<B: Backend>(
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: &CachePair<B>,
        rows: &[(usize, usize)],
    ) -> Option<Self> {
        let [batch, _, seq, dim] = q.dims();
        let [kb, kv, ks, kd] = k.dims();
        let same = [k, v].iter().all(|t| t.dtype() == q.dtype());
        if !same || (kb, ks, kd) != (batch, seq, dim) || v.dims() != k.dims() {
            return None;
        }
        Self::plan_shape(q.dims(), kv, q.dtype(), cos, sin, cache, rows)
    }

    /// [`RopeWrite::plan_shape`] for a projection `qkv: [b, seq, (heads + 2 kv) d]` before
    /// it is split into heads (`kv` and `d` are the cache's).
    fn plan_packed<B: Backend>(
        qkv: &Tensor<B, 3>,
        heads: usize,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: &CachePair<B>,
        rows: &[(usize, usize)],
    ) -> Option<Self> {
        let [batch, seq, features] = qkv.dims();
        let [_, kv, _, dim] = cache.0.dims();
        if (heads + 2 * kv).checked_mul(dim) != Some(features) {
            return None;
        }
        Self::plan_shape(
            [batch, heads, seq, dim],
            kv,
            qkv.dtype(),
            cos,
            sin,
            cache,
            rows,
        )
    }

    /// [`RopeWrite::plan`] for queries of shape `q: [b, heads, seq, d]` and keys and values
    /// of `kv` heads, all of `dtype`.
    fn plan_shape<B: Backend>(
        q: [usize; 4],
        kv: usize,
        dtype: DType,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: &CachePair<B>,
        rows: &[(usize, usize)],
    ) -> Option<Self> {
        let [batch, heads, seq, dim] = q;
        let [slots, ckv, n, cd] = cache.0.dims();
        let dtypes = [cos, sin, &cache.0, &cache.1]
            .iter()
            .all(|t| t.dtype() == dtype);
        if !dtypes || !float_dtype(dtype) {
            return None;
        }
        let table = |t: &Tensor<B, 4>| {
            let [tb, one, ts, td] = t.dims();
            (tb == 1 || tb == batch) && one == 1 && (ts, td) == (seq, dim)
        };
        let shapes = cache.1.dims() == cache.0.dims()
            && (ckv, cd) == (kv, dim)
            && table(cos)
            && table(sin)
            && rows.len() == batch
            && batch * heads * seq * kv > 0
            && dim > 0
            && dim.is_multiple_of(2);
        let fits = rows
            .iter()
            .all(|&(row, start)| row < slots && start.checked_add(seq).is_some_and(|end| end <= n));
        if !shapes || !fits {
            return None;
        }
        let elements = (heads + 2 * kv).checked_mul(dim)?;
        // Cube counts past 65535 per dimension are not portable.
        let limit = |x: usize| u32::try_from(x).ok().filter(|&x| x <= 65535);
        let grid = (
            limit(elements.div_ceil(Self::BLOCK))?,
            limit(seq)?,
            limit(batch)?,
        );
        let (row0, start0) = rows[0];
        let uniform = rows
            .iter()
            .enumerate()
            .all(|(b, &r)| r == (row0 + b, start0));
        let per_row = if uniform {
            None
        } else {
            let flat: Option<Vec<u32>> = rows
                .iter()
                .flat_map(|&(r, s)| [r, s])
                .map(|x| u32::try_from(x).ok())
                .collect();
            Some(flat?)
        };
        Some(Self {
            dtype,
            q_shape: vec![batch, heads, seq, dim],
            grid,
            per_row,
            row0: u32::try_from(row0).ok()?,
            start0: u32::try_from(start0).ok()?,
        })
    }

    /// Registers the op of `inputs` (the cache's keys and values among them: `cache` goes
    /// into the op, its outputs are the written cache) that `run` launches.
    fn register<R, B, const N: usize>(
        self,
        inputs: [B::FloatTensorPrimitive; N],
        cache: CachePair<B>,
        run: impl Fn(&Self, [CubeTensor<R>; N]) -> [CubeTensor<R>; 3] + Send + Sync + 'static,
    ) -> RopeWritten<B>
    where
        R: CubeRuntime,
        B: CubeHost<Runtime = R>,
    {
        let outputs = [
            (self.q_shape.clone(), self.dtype),
            (cache.0.dims().to_vec(), self.dtype),
            (cache.1.dims().to_vec(), self.dtype),
        ];
        drop(cache);
        let [q, keys, values] =
            B::launch("ember.rope_write", inputs, outputs, move |t| run(&self, t));
        let float = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
        RopeWritten {
            q: float(q),
            keys: float(keys),
            values: float(values),
        }
    }

    /// Launches the kernel (when the stream reaches the op): the rotated q, and the cache's
    /// keys and values written (in place unless shared, as burn's `slice_assign`).
    #[allow(clippy::too_many_arguments)]
    fn launch<R: CubeRuntime>(
        &self,
        q: CubeTensor<R>,
        k: CubeTensor<R>,
        v: CubeTensor<R>,
        cos: CubeTensor<R>,
        sin: CubeTensor<R>,
        keys: CubeTensor<R>,
        values: CubeTensor<R>,
        (k_at, v_at): (usize, usize),
    ) -> [CubeTensor<R>; 3] {
        let (keys, values) = (writable(keys), writable(values));
        let q_out = output(&q, self.q_shape.clone());
        let client = q.client.clone();
        // The per-row positions, or a placeholder the kernel does not read.
        let rows = match &self.per_row {
            Some(flat) => {
                let bytes: Vec<u8> = flat.iter().flat_map(|x| x.to_ne_bytes()).collect();
                let handle = client.create_from_slice(&bytes);
                CubeTensor::new_contiguous(
                    client.clone(),
                    q.device.clone(),
                    burn::tensor::Shape::from(vec![flat.len()]),
                    handle,
                    DType::U32,
                )
            }
            None => CubeTensor::new_contiguous(
                client.clone(),
                q.device.clone(),
                burn::tensor::Shape::from(vec![1]),
                client.empty(4),
                DType::U32,
            ),
        };
        let dtype = q.dtype;
        // SAFETY: `plan` checked the shapes: q `[b, heads, seq, d]`, k and v `[b, kv, seq, d]`
        // (from `k_at` and `v_at` on: the caller's views of one buffer, inside it),
        // cos and sin `[1 or b, 1, seq, d]`, keys and values `[slots, kv, n, d]` with every
        // batch row's cache row below `slots` and `start + seq <= n`, `d` even; the grid is
        // (elements of a token's heads / block, seq, b) and units past the elements do
        // nothing; `rows` holds 2 b values when the kernel reads it; `q_out` is allocated here
        // with q's shape.
        unsafe {
            kernels::rope_write::launch_unchecked::<R>(
                &client,
                CubeCount::Static(self.grid.0, self.grid.1, self.grid.2),
                CubeDim::new_1d(Self::BLOCK as u32),
                q.into_tensor_arg(),
                k.into_tensor_arg(),
                v.into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                rows.into_tensor_arg(),
                q_out.clone().into_tensor_arg(),
                keys.clone().into_tensor_arg(),
                values.clone().into_tensor_arg(),
                self.row0,
                self.start0,
                k_at,
                v_at,
                self.per_row.is_some(),
                Self::BLOCK,
                dtype.into(),
            );
        }
        [q_out, keys, values]
    }
}

/// A contiguous output like `like`'s device and dtype.
fn output<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>) -> CubeTensor<R> {
    output_of(like, shape, like.dtype)
}

/// A contiguous output of `dtype` on `like`'s device.
fn output_of<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: Vec<usize>,
    dtype: DType,
) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        burn::tensor::Shape::from(shape),
        dtype,
    )
}

impl<R, B> FusedOps<B> for CubeFused<R>
where
    R: CubeRuntime,
    B: CubeHost<Runtime = R>,
{
    fn rms_norm(&self, x: &Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, 3>> {
        let [batch, seq, hidden] = x.dims();
        let dtype = x.dtype();
        if dtype != weight.dtype() || !float_dtype(dtype) || weight.dims()[0] != hidden {
            return None;
        }
        if batch * seq == 0 || hidden == 0 {
            return None;
        }
        let (xf, wf) = (float(x)?, float(weight)?);
        let rows = u32::try_from(batch * seq).ok()?;
        let eps = eps as f32;
        let out = register::<R, B, 2>(
            "ember.rms_norm",
            [xf, wf],
            vec![batch, seq, hidden],
            dtype,
            move |[x, w]| {
                let out = output(&x, vec![batch, seq, hidden]);
                let dtype = x.dtype;
                let client = x.client.clone();
                // SAFETY: one cube per row of `out` ([batch * seq, hidden], allocated here);
                // each unit reads and writes indices below `hidden` of its row, inside `x`'s
                // and `weight`'s shapes and strides.
                unsafe {
                    kernels::rms_norm::launch_unchecked::<R>(
                        &client,
                        CubeCount::Static(rows, 1, 1),
                        CubeDim::new_1d(BLOCK as u32),
                        x.into_tensor_arg(),
                        w.into_tensor_arg(),
                        out.clone().into_tensor_arg(),
                        eps,
                        BLOCK,
                        dtype.into(),
                    );
                }
                out
            },
        );
        Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    fn add_rms_norm(
        &self,
        x: &Tensor<B, 3>,
        y: &Tensor<B, 3>,
        weight: &Tensor<B, 1>,
        eps: f64,
    ) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
        let [batch, seq, hidden] = x.dims();
        let dtype = x.dtype();
        let same = y.dtype() == dtype && weight.dtype() == dtype && float_dtype(dtype);
        if !same || y.dims() != x.dims() || weight.dims()[0] != hidden {
            return None;
        }
        if batch * seq == 0 || hidden == 0 {
            return None;
        }
        let (xf, yf, wf) = (float(x)?, float(y)?, float(weight)?);
        let rows = u32::try_from(batch * seq).ok()?;
        let eps = eps as f32;
        let shape = vec![batch, seq, hidden];
        let [sum, out] = B::launch(
            "ember.add_rms_norm",
            [xf, yf, wf],
            [(shape.clone(), dtype), (shape.clone(), dtype)],
            move |[x, y, w]| {
                let sum = output(&x, shape.clone());
                let out = output(&x, shape.clone());
                let dtype = x.dtype;
                let client = x.client.clone();
                // SAFETY: one cube per row of `sum` and `out` ([batch * seq, hidden], allocated
                // here); each unit reads and writes indices below `hidden` of its row, inside
                // `x`'s, `y`'s (checked the same shape) and `weight`'s shapes and strides.
                unsafe {
                    kernels::add_rms_norm::launch_unchecked::<R>(
                        &client,
                        CubeCount::Static(rows, 1, 1),
                        CubeDim::new_1d(BLOCK as u32),
                        x.into_tensor_arg(),
                        y.into_tensor_arg(),
                        w.into_tensor_arg(),
                        sum.clone().into_tensor_arg(),
                        out.clone().into_tensor_arg(),
                        eps,
                        BLOCK,
                        dtype.into(),
                    );
                }
                [sum, out]
            },
        );
        let float = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
        Some((float(sum), float(out)))
    }

    fn fuses_add_rms_norm(&self) -> bool {
        true
    }

    fn add_rms_norm_linear(
        &self,
        x: &Tensor<B, 3>,
        y: &Tensor<B, 3>,
        weight: &Tensor<B, 1>,
        eps: f64,
        w: &Tensor<B, 2>,
    ) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
        norm_matvec(x, y, weight, eps, w)
    }

    fn gated(&self, gate_up: &Tensor<B, 3>, act: Gate) -> Option<Tensor<B, 3>> {
        let [batch, seq, features] = gate_up.dims();
        let dtype = gate_up.dtype();
        let inter = features / 2;
        if !float_dtype(dtype) || !features.is_multiple_of(2) || batch * seq * inter == 0 {
            return None;
        }
        // Cube counts past 65535 per dimension are not portable.
        let limit = |x: usize| u32::try_from(x).ok().filter(|&x| x <= 65535);
        let grid = (limit(inter.div_ceil(BLOCK))?, limit(batch * seq)?);
        let gelu = act == Gate::GeluTanh;
        let shape = vec![batch, seq, inter];
        let out = register::<R, B, 1>(
            "ember.gated",
            [float(gate_up)?],
            shape.clone(),
            dtype,
            move |[gate_up]| {
                let out = output(&gate_up, shape.clone());
                let dtype = gate_up.dtype;
                let client = gate_up.client.clone();
                // SAFETY: the grid is (inter / block rounded up, batch * seq); units at or
                // past `inter` do nothing, the others read features `i` and `inter + i` of
                // their row, inside `gate_up`'s shape and strides, and write `out` (allocated
                // here, [batch, seq, inter]) at `row * inter + i`.
                unsafe {
                    kernels::gated::launch_unchecked::<R>(
                        &client,
                        CubeCount::Static(grid.0, grid.1, 1),
                        CubeDim::new_1d(BLOCK as u32),
                        gate_up.into_tensor_arg(),
                        out.clone().into_tensor_arg(),
                        gelu,
                        BLOCK,
                        dtype.into(),
                    );
                }
                out
            },
        );
        Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    fn gated_linear(
        &self,
        gate_up: &Tensor<B, 3>,
        act: Gate,
        w: &Tensor<B, 2>,
    ) -> Option<Tensor<B, 3>> {
        matvec(gate_up, w, Some(act))
    }

    fn linear(&self, x: &Tensor<B, 3>, w: &Tensor<B, 2>) -> Option<Tensor<B, 3>> {
        matvec(x, w, None)
    }

    fn quantized(
        &self,
        tensor: &ember::format::QuantizedRows<'_>,
        device: &burn::tensor::Device<B>,
        dtype: DType,
    ) -> ember::Result<Option<ember::nn::linear::Native<B>>> {
        Ok(CubeQuantized::<B>::load(tensor, device, dtype)?
            .map(|q| ember::nn::linear::Native(std::sync::Arc::new(q))))
    }

    fn decode_attention(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        keys: std::ops::Range<usize>,
    ) -> Option<Tensor<B, 3>> {
        let [batch, heads, one, dim] = q.dims();
        let [kb, kv, cached, kd] = k.dims();
        let dtype = q.dtype();
        let same = k.dtype() == dtype && v.dtype() == dtype && float_dtype(dtype);
        let shapes = one == 1
            && (kb, kd) == (batch, dim)
            && v.dims() == k.dims()
            && kv > 0
            && heads.is_multiple_of(kv)
            && (1..=MAX_HEAD_DIM).contains(&dim);
        if !same || !shapes || keys.start >= keys.end || keys.end > cached {
            return None;
        }
        let groups = heads / kv;
        let grid = (
            u32::try_from(groups).ok()?,
            u32::try_from(kv).ok()?,
            u32::try_from(batch).ok()?,
        );
        let (first, len) = (
            u32::try_from(keys.start).ok()?,
            u32::try_from(keys.end).ok()?,
        );
        let scale = (dim as f32).powf(-0.5);
        let out = register::<R, B, 3>(
            "ember.decode_attention",
            [float(q)?, float(k)?, float(v)?],
            vec![batch, 1, heads * dim],
            dtype,
            move |[mut q, k, v]| {
                // q's heads seen as [batch, kv, groups, dim] (head h = kv head h / groups,
                // query row h % groups): strides only, no copy. The kernel writes row-major
                // [batch, kv, groups, dim], which is `out`'s [batch, 1, heads * dim].
                let s = q.meta.strides().clone();
                q.meta = Box::new(Metadata::new(
                    [batch, kv, groups, dim],
                    Strides::new(&[s[0], groups * s[1], s[1], s[3]]),
                ));
                let out = output(&q, vec![batch, 1, heads * dim]);
                let dtype = q.dtype;
                let client = q.client.clone();
                // SAFETY: one cube per query head (grid: groups x kv x batch, q's view above);
                // keys `first..len` with `len` at most k's and v's length, dimensions below
                // `dim` (equal for q, k, v; at most the cube's width); no bias is read (`k`
                // stands in for it); `out` holds batch x heads x dim elements.
                unsafe {
                    kernels::attention::launch_unchecked::<R>(
                        &client,
                        CubeCount::Static(grid.0, grid.1, grid.2),
                        CubeDim::new_1d(BLOCK as u32),
                        q.into_tensor_arg(),
                        k.clone().into_tensor_arg(),
                        v.into_tensor_arg(),
                        k.into_tensor_arg(),
                        out.clone().into_tensor_arg(),
                        first,
                        len,
                        scale,
                        false,
                        BLOCK,
                        dtype.into(),
                    );
                }
                out
            },
        );
        Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    fn rope_write(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: (Tensor<B, 4>, Tensor<B, 4>),
        rows: &[(usize, usize)],
    ) -> Result<RopeWritten<B>, CachePair<B>> {
        let Some(plan) = RopeWrite::plan(q, k, v, cos, sin, &cache, rows) else {
            return Err(cache);
        };
        let Some(inputs) = [q, k, v, cos, sin, &cache.0, &cache.1].try_map_float() else {
            return Err(cache);
        };
        Ok(
            plan.register(inputs, cache, |plan, [q, k, v, cos, sin, keys, values]| {
                plan.launch(q, k, v, cos, sin, keys, values, (0, 0))
            }),
        )
    }

    fn rope_write_packed(
        &self,
        qkv: &Tensor<B, 3>,
        heads: usize,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: CachePair<B>,
        rows: &[(usize, usize)],
    ) -> Result<RopeWritten<B>, CachePair<B>> {
        let [batch, seq, _] = qkv.dims();
        let [_, kv, _, dim] = cache.0.dims();
        let plan = RopeWrite::plan_packed(qkv, heads, cos, sin, &cache, rows);
        let Some(plan) = plan else {
            return Err(cache);
        };
        let (Some(qkv), Some([cos, sin, keys, values])) =
            (float(qkv), [cos, sin, &cache.0, &cache.1].try_map_float())
        else {
            return Err(cache);
        };
        Ok(plan.register(
            [qkv, cos, sin, keys, values],
            cache,
            move |plan, [qkv, cos, sin, keys, values]| {
                // q, k and v as views of the projection's heads: `[b, h, seq, d]` with the
                // token's stride between positions, `d` elements between heads; k's and
                // v's first elements passed as offsets (the three share one buffer).
                let s = qkv.meta.strides().clone();
                let view = |h: usize| {
                    let mut t = qkv.clone();
                    t.meta = Box::new(Metadata::new(
                        [batch, h, seq, dim],
                        Strides::new(&[s[0], dim * s[2], s[1], s[2]]),
                    ));
                    t
                };
                let (q, k, v) = (view(heads), view(kv), view(kv));
                let at = (heads * dim * s[2], (heads + kv) * dim * s[2]);
                plan.launch(q, k, v, cos, sin, keys, values, at)
            },
        ))
    }

    fn rope_write_attend(
        &self,
        qkv: &Tensor<B, 3>,
        heads: usize,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        cache: CachePair<B>,
        rows: &[(usize, usize)],
        keys: std::ops::Range<usize>,
    ) -> Result<(Tensor<B, 3>, CachePair<B>), CachePair<B>> {
        let [batch, seq, _] = qkv.dims();
        let [_, kv, _, dim] = cache.0.dims();
        let plan = RopeWrite::plan_packed(qkv, heads, cos, sin, &cache, rows);
        // One token per row, every row at the position `keys` ends on (the plan checked it
        // is inside the cache), a head within the cube, whole groups of query heads.
        let decode = seq == 1
            && kv > 0
            && heads.is_multiple_of(kv)
            && dim <= MAX_HEAD_DIM
            && keys.start < keys.end
            && rows.iter().all(|&(_, start)| start + 1 == keys.end);
        let grid = (
            u32::try_from(heads / kv.max(1)).ok(),
            u32::try_from(kv).ok(),
            u32::try_from(batch).ok(),
        );
        let Some(plan) = plan.filter(|p| decode && p.per_row.is_none()) else {
            return Err(cache);
        };
        let (Some(gx), Some(gy), Some(gz)) = grid else {
            return Err(cache);
        };
        let (Some(qkv), Some([cos, sin, keys_in, values_in])) =
            (float(qkv), [cos, sin, &cache.0, &cache.1].try_map_float())
        else {
            return Err(cache);
        };
        let (Ok(pos), Ok(first)) = (u32::try_from(keys.end - 1), u32::try_from(keys.start)) else {
            return Err(cache);
        };
        let outputs = [
            (vec![batch, 1, heads * dim], plan.dtype),
            (cache.0.dims().to_vec(), plan.dtype),
            (cache.1.dims().to_vec(), plan.dtype),
        ];
        // The cache's tensors go into the op: its outputs are the written cache.
        drop(cache);
        let scale = (dim as f32).powf(-0.5);
        let row0 = plan.row0;
        let [out, keys_out, values_out] = B::launch(
            "ember.rope_attend",
            [qkv, cos, sin, keys_in, values_in],
            outputs,
            move |[qkv, cos, sin, keys, values]| {
                let (keys, values) = (writable(keys), writable(values));
                let out = output(&qkv, vec![batch, 1, heads * dim]);
                let dtype = qkv.dtype;
                let client = qkv.client.clone();
                // SAFETY: the plan checked the shapes (qkv `[b, 1, (heads + 2 kv) d]`, cos and
                // sin `[1 or b, 1, 1, d]`, keys and values `[slots, kv, n, d]` with rows
                // `row0 + b` below `slots` and `pos < n`, d even and at most the cube's
                // width); the grid is (heads / kv, kv, b); units at or past `d` only take
                // part in the reductions; `out` is allocated here.
                unsafe {
                    kernels::rope_attend::launch_unchecked::<R>(
                        &client,
                        CubeCount::Static(gx, gy, gz),
                        CubeDim::new_1d(BLOCK as u32),
                        qkv.into_tensor_arg(),
                        cos.into_tensor_arg(),
                        sin.into_tensor_arg(),
                        out.clone().into_tensor_arg(),
                        keys.clone().into_tensor_arg(),
                        values.clone().into_tensor_arg(),
                        row0,
                        pos,
                        first,
                        scale,
                        BLOCK,
                        dtype.into(),
                    );
                }
                [out, keys, values]
            },
        );
        let cache = (
            Tensor::from_primitive(TensorPrimitive::Float(keys_out)),
            Tensor::from_primitive(TensorPrimitive::Float(values_out)),
        );
        Ok((Tensor::from_primitive(TensorPrimitive::Float(out)), cache))
    }

    fn attention(
        &self,
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        bias: Option<&Tensor<B, 4>>,
    ) -> Option<Tensor<B, 4>> {
        let [batch, heads, rows, dim] = q.dims();
        let [kb, kh, keys, kd] = k.dims();
        let dtype = q.dtype();
        let same = [k.dtype(), v.dtype()]
            .into_iter()
            .chain(bias.map(|b| b.dtype()))
            .all(|d| d == dtype);
        if !same || !float_dtype(dtype) || (kb, kh, kd) != (batch, heads, dim) {
            return None;
        }
        if v.dims() != k.dims() || dim == 0 || dim > MAX_HEAD_DIM || rows > MAX_QUERY_ROWS {
            return None;
        }
        if let Some(b) = bias {
            let broadcasts = |have: usize, want: usize| have == want || have == 1;
            let [b0, b1, b2, b3] = b.dims();
            let fits = broadcasts(b0, batch)
                && broadcasts(b1, heads)
                && broadcasts(b2, rows)
                && broadcasts(b3, keys);
            if !fits {
                return None;
            }
        }
        let grid = (
            u32::try_from(rows).ok()?,
            u32::try_from(heads).ok()?,
            u32::try_from(batch).ok()?,
        );
        let len = u32::try_from(keys).ok()?;
        let scale = (dim as f32).powf(-0.5);
        let shape = vec![batch, heads, rows, dim];
        let launch = move |q: CubeTensor<R>,
                           k: CubeTensor<R>,
                           v: CubeTensor<R>,
                           bias: Option<CubeTensor<R>>| {
            let out = output(&q, shape.clone());
            let dtype = q.dtype;
            let client = q.client.clone();
            let has_bias = bias.is_some();
            // Without a bias the kernel reads none: `k` stands in for the argument.
            let bias = bias.unwrap_or_else(|| k.clone());
            // SAFETY: one cube per query row of `out` (allocated here, the grid is its shape);
            // keys below `len` (k's length), dimensions below `dim` (checked equal for q, k,
            // v and at most the cube's width), bias indices taken modulo its shape.
            unsafe {
                kernels::attention::launch_unchecked::<R>(
                    &client,
                    CubeCount::Static(grid.0, grid.1, grid.2),
                    CubeDim::new_1d(BLOCK as u32),
                    q.into_tensor_arg(),
                    k.into_tensor_arg(),
                    v.into_tensor_arg(),
                    bias.into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    0,
                    len,
                    scale,
                    has_bias,
                    BLOCK,
                    dtype.into(),
                );
            }
            out
        };
        let (qf, kf, vf) = (float(q)?, float(k)?, float(v)?);
        let shape = vec![batch, heads, rows, dim];
        let out = match bias {
            Some(b) => register::<R, B, 4>(
                "ember.attention",
                [qf, kf, vf, float(b)?],
                shape,
                dtype,
                move |[q, k, v, b]| launch(q, k, v, Some(b)),
            ),
            None => register::<R, B, 3>(
                "ember.attention",
                [qf, kf, vf],
                shape,
                dtype,
                move |[q, k, v]| launch(q, k, v, None),
            ),
        };
        Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }
}

/// Features of the normed rows [`FusedOps::add_rms_norm_linear`] takes: the kernel holds a
/// row in shared memory (8 KiB of f32, within the 16 KiB every Vulkan device offers beside
/// the partial sums' 4 KiB).
pub const MAX_NORM_FEATURES: usize = 2048;

/// The activations of [`kernels::matvec`]'s rows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Prologue {
    /// `x` itself.
    Plain,
    /// A gated MLP's activation of `x = gate_up`.
    Gated(Gate),
    /// RMSNorm of `x + y` (epsilon).
    Norm(f32),
}

impl Prologue {
    /// The kernels' comptime switches and epsilon: `(gated, gelu, norm, eps)`.
    fn flags(self) -> (bool, bool, bool, f32) {
        match self {
            Prologue::Plain => (false, false, false, 0.0),
            Prologue::Gated(act) => (true, act == Gate::GeluTanh, false, 0.0),
            Prologue::Norm(eps) => (false, false, true, eps),
        }
    }
}

/// The grid and vector width of [`kernels::matvec`] for `rows` rows and `outputs` columns,
/// or `None` past the portable limits.
fn matvec_grid(rows: usize, outputs: usize) -> Option<((u32, u32), usize)> {
    let width = if outputs.is_multiple_of(MATVEC_WIDTH) {
        MATVEC_WIDTH
    } else {
        1
    };
    let limit = |x: usize| u32::try_from(x).ok().filter(|&x| x <= 65535);
    let grid = (
        limit((outputs / width).div_ceil(MATVEC_LANES))?,
        limit(rows)?,
    );
    Some((grid, width))
}

/// The strides of a tensor's last three dims (a 1D or 2D tensor's missing ones 0).
fn last3(strides: &[usize]) -> [usize; 3] {
    let mut out = [0; 3];
    for (o, s) in out.iter_mut().rev().zip(strides.iter().rev()) {
        *o = *s;
    }
    out
}

/// Launches [`kernels::matvec`] (when the stream reaches the op) into `out` (and `sum` for
/// the norm), allocated here; `y` and `weight` are read by the norm only.
#[allow(clippy::too_many_arguments)]
fn launch_matvec<R: CubeRuntime>(
    x: CubeTensor<R>,
    y: CubeTensor<R>,
    weight: CubeTensor<R>,
    w: CubeTensor<R>,
    shape: Vec<usize>,
    prologue: Prologue,
    (grid, width): ((u32, u32), usize),
) -> [CubeTensor<R>; 2] {
    // The kernel reads each row of `w` as vectors: neighbouring columns, rows a whole number
    // of vectors apart (burn-cubecl pads the rows of a 2D tensor to an aligned pitch: 576 f16
    // columns take 640, which is such a stride). Another view is copied first.
    let strides = w.meta.strides();
    let rows_of_vectors = strides[1] == 1 && strides[0].is_multiple_of(width);
    let w = if rows_of_vectors {
        w
    } else {
        burn_cubecl::kernel::into_contiguous(w)
    };
    let out = output(&x, shape.clone());
    let norm = matches!(prologue, Prologue::Norm(_));
    // The sum of the norm's inputs, or a stand-in the kernel does not write.
    let sum = if norm {
        let mut like = shape;
        if let Some(last) = like.last_mut() {
            *last = w.meta.shape()[0];
        }
        output(&x, like)
    } else {
        out.clone()
    };
    let dtype = x.dtype;
    let client = x.client.clone();
    let (gated, gelu, _, eps) = prologue.flags();
    let [x_batch, x_seq, x_step] = last3(x.meta.strides());
    let [y_batch, y_seq, y_step] = last3(y.meta.strides());
    let geometry = kernels::MatvecGeometryLaunch::new(
        x.meta.shape()[1],
        x_batch,
        x_seq,
        x_step,
        y_batch,
        y_seq,
        y_step,
        weight.meta.strides()[0],
        w.meta.shape()[0],
        w.meta.shape()[1] / width,
        w.meta.strides()[0] / width,
    );
    // SAFETY: the grid is (vectors of `out`'s columns / lanes rounded up, batch * seq); each
    // unit reads features below `inputs` (w's rows; and `inputs + i` gated: `x` has `2 *
    // inputs` features, checked by the caller, as `y`'s and `weight`'s shapes for the norm,
    // at most MAX_NORM_FEATURES, the shared row's length) of its row of `x` inside its shape
    // and strides, weight vectors `[i, c]` with `i < inputs`, `c` below the vectors of a row
    // of `w` (rows a whole number of vectors apart, `outputs` a multiple of the width), and
    // writes `out` (allocated here, [batch, seq, outputs]) at vector `row * columns + c` and
    // `sum` (allocated here, [batch, seq, inputs]) below `inputs` of its row; lanes x parts
    // is the cube's width.
    unsafe {
        kernels::matvec::launch_unchecked::<R>(
            &client,
            CubeCount::Static(grid.0, grid.1, 1),
            CubeDim::new_1d(BLOCK as u32),
            width,
            x.into_array_arg(),
            y.into_array_arg(),
            weight.into_array_arg(),
            w.into_array_arg(),
            sum.clone().into_array_arg(),
            out.clone().into_array_arg(),
            geometry,
            eps,
            gated,
            gelu,
            norm,
            MATVEC_LANES,
            BLOCK / MATVEC_LANES,
            BLOCK,
            MAX_NORM_FEATURES,
            dtype.into(),
        );
    }
    [sum, out]
}

/// [`kernels::matvec`] as a registered op: `x.matmul(w)` (`gate` `None`, `x: [batch, seq,
/// in]`) or `gated(x, gate).matmul(w)` (`x: [batch, seq, 2 in]`) for `w: [in, out]`, or
/// `None` where the kernel does not apply (a prompt's rows, mixed dtypes, shapes that do not
/// match, grids past the portable limits): burn's autotuned matmul then.
fn matvec<R, B>(x: &Tensor<B, 3>, w: &Tensor<B, 2>, gate: Option<Gate>) -> Option<Tensor<B, 3>>
where
    R: CubeRuntime,
    B: CubeHost<Runtime = R>,
{
    let [batch, seq, features] = x.dims();
    let [inputs, outputs] = w.dims();
    let dtype = x.dtype();
    let wanted = if gate.is_some() { 2 * inputs } else { inputs };
    if dtype != w.dtype() || !float_dtype(dtype) || features != wanted {
        return None;
    }
    let rows = batch * seq;
    if rows == 0 || rows > MAX_MATVEC_ROWS || inputs == 0 || outputs == 0 {
        return None;
    }
    let plan = matvec_grid(rows, outputs)?;
    let (name, prologue) = match gate {
        Some(act) => ("ember.gated_matvec", Prologue::Gated(act)),
        None => ("ember.matvec", Prologue::Plain),
    };
    let shape = vec![batch, seq, outputs];
    let out = register::<R, B, 2>(
        name,
        [float(x)?, float(w)?],
        shape.clone(),
        dtype,
        move |[x, w]| {
            // `x` stands in for the norm's inputs, which the kernel does not read here.
            let [_, out] = launch_matvec(x.clone(), x.clone(), x, w, shape.clone(), prologue, plan);
            out
        },
    );
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

/// Two tensors of a CubeCL backend.
type Pair<B> = (Tensor<B, 3>, Tensor<B, 3>);

/// [`FusedOps::add_rms_norm_linear`] as one registered op on [`kernels::matvec`].
fn norm_matvec<R, B>(
    x: &Tensor<B, 3>,
    y: &Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    eps: f64,
    w: &Tensor<B, 2>,
) -> Option<Pair<B>>
where
    R: CubeRuntime,
    B: CubeHost<Runtime = R>,
{
    let [batch, seq, hidden] = x.dims();
    let [inputs, outputs] = w.dims();
    let dtype = x.dtype();
    let same = [y.dtype(), weight.dtype(), w.dtype()]
        .iter()
        .all(|&d| d == dtype);
    let shapes = y.dims() == x.dims() && weight.dims() == [hidden] && inputs == hidden;
    if !same || !float_dtype(dtype) || !shapes || hidden > MAX_NORM_FEATURES {
        return None;
    }
    let rows = batch * seq;
    if rows == 0 || rows > MAX_MATVEC_ROWS || hidden == 0 || outputs == 0 {
        return None;
    }
    let plan = matvec_grid(rows, outputs)?;
    let prologue = Prologue::Norm(eps as f32);
    let shape = vec![batch, seq, outputs];
    let [sum, out] = B::launch(
        "ember.add_rms_norm_matvec",
        [float(x)?, float(y)?, float(weight)?, float(w)?],
        [(vec![batch, seq, hidden], dtype), (shape.clone(), dtype)],
        move |[x, y, weight, w]| launch_matvec(x, y, weight, w, shape.clone(), prologue, plan),
    );
    let float = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
    Some((float(sum), float(out)))
}
