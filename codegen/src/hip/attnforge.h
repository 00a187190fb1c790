// attnforge device helpers.
//
// The printer copies this file verbatim into every generated translation
// unit, after defining AF_WARP_SIZE (the target's warp size) and AF_BLOCK_DIM
// (the kernel's fixed block size), so that each unit compiles on its own with
// hipcc or hiprtc (AMD) and with nvcc or NVRTC (NVIDIA). The kernel text is
// the same for both vendors; only this header branches, on __CUDACC__.
// Keep it free of anything target-specific beyond those two macros.

#ifndef AF_WARP_SIZE
#error "AF_WARP_SIZE must be defined before attnforge.h"
#endif

#if defined(__CUDACC__)
// ---- NVIDIA (nvcc, NVRTC) ----
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#include <cuda_fp8.h>
#endif

// Every NVIDIA warp has 32 threads: a kernel generated for wave64 must never
// be compiled here, its shuffles and reductions assume 64 lanes.
static_assert(AF_WARP_SIZE == 32, "attnforge: kernel generated for another warp size");

// The kernel's fixed block size, and at least one block per SM: with the
// minimum stated, ptxas allots up to 255 registers as it needs them (with
// the block size alone it was seen spilling a few values at 56).
#define AF_LAUNCH_BOUNDS __launch_bounds__(AF_BLOCK_DIM, 1)

// HIP's shuffles act on the whole warp, always converged in attnforge's
// kernels (the verifier requires warp-uniform control flow around them):
// the _sync forms with every lane in the mask.
template <typename T>
__device__ __forceinline__ T af_shfl_xor(T v, int mask, int width) {
  return __shfl_xor_sync(0xffffffffu, v, mask, width);
}
template <typename T>
__device__ __forceinline__ T af_shfl_down(T v, unsigned int delta, int width) {
  return __shfl_down_sync(0xffffffffu, v, delta, width);
}
template <typename T>
__device__ __forceinline__ T af_shfl(T v, int lane, int width) {
  return __shfl_sync(0xffffffffu, v, lane, width);
}
#else
// ---- AMD (hipcc, hiprtc) ----
// hiprtc provides the HIP headers itself; hipcc needs them included.
#if !defined(__HIPCC_RTC__)
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#endif

// The kernel's fixed block size.
#define AF_LAUNCH_BOUNDS __launch_bounds__(AF_BLOCK_DIM)

// A kernel generated for wave64 must never be compiled for wave32 or back:
// its shuffles and reductions assume the warp size it was generated for.
#if defined(__HIP_DEVICE_COMPILE__) && defined(__AMDGCN_WAVEFRONT_SIZE)
static_assert(__AMDGCN_WAVEFRONT_SIZE == AF_WARP_SIZE,
              "attnforge: kernel generated for another wavefront size");
#endif

template <typename T>
__device__ __forceinline__ T af_shfl_xor(T v, int mask, int width) {
  return __shfl_xor(v, mask, width);
}
template <typename T>
__device__ __forceinline__ T af_shfl_down(T v, unsigned int delta, int width) {
  return __shfl_down(v, delta, width);
}
template <typename T>
__device__ __forceinline__ T af_shfl(T v, int lane, int width) {
  return __shfl(v, lane, width);
}
#endif

// +inf and the default quiet NaN by their bits: every compiler attnforge
// targets (hipcc, hiprtc, nvcc, NVRTC) folds these; not all know GCC's
// __builtin_inff/__builtin_nanf.
__device__ __forceinline__ float af_inf() { return __uint_as_float(0x7f800000u); }
__device__ __forceinline__ float af_nan() { return __uint_as_float(0x7fc00000u); }

// bfloat16 as its bit pattern; converted through f32 (round to nearest even).
struct af_bf16 {
  unsigned short bits;
};

__device__ __forceinline__ float af_to_f32(float x) { return x; }
__device__ __forceinline__ float af_to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float af_to_f32(af_bf16 x) {
  return __uint_as_float(((unsigned int)x.bits) << 16);
}

__device__ __forceinline__ __half af_f32_to_f16(float x) { return __float2half(x); }
__device__ __forceinline__ af_bf16 af_f32_to_bf16(float x) {
  unsigned int u = __float_as_uint(x);
  af_bf16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = (unsigned short)((u >> 16) | 0x40u);  // quiet NaN, sign kept
  } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // The same rounding, in one instruction (cvt.rn.bf16.f32).
    r.bits = __bfloat16_as_ushort(__float2bfloat16_rn(x));
#else
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = (unsigned short)(u >> 16);
#endif
  }
  return r;
}

// FP8 E4M3 (OCP "fn": bias 7, no infinities, 0x7f/0xff NaN, largest
// finite 448) as its bit pattern, converted through f32 with integer
// arithmetic only, so that every arch (and CUDA) compiles it alike.
struct af_fp8e4m3 {
  unsigned char bits;
};

__device__ __forceinline__ float af_to_f32(af_fp8e4m3 x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  // The conversion instruction (cvt.rn.f16x2.e4m3x2), exact; NaN stays NaN.
  return __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)x.bits, __NV_E4M3)));
#endif
  unsigned int sign = ((unsigned int)x.bits & 0x80u) << 24;
  unsigned int em = (unsigned int)x.bits & 0x7fu;
  if (em == 0x7fu) return __uint_as_float(sign | 0x7fc00000u);  // NaN
  // Normal: the exponent rebiased (7 -> 127) lands the 7 bits at f32 bit 20.
  // Subnormal: m * 2^-9, exact in f32.
  float mag = em >= 0x08u ? __uint_as_float((em + (120u << 3)) << 20) : (float)em * 0.001953125f;
  return __uint_as_float(__float_as_uint(mag) | sign);
}

// Round to nearest even; saturates to +-448 (infinities too); NaN stays NaN.
__device__ __forceinline__ af_fp8e4m3 af_f32_to_fp8e4m3(float x) {
  unsigned int u = __float_as_uint(x);
  unsigned int sign = (u >> 24) & 0x80u;
  unsigned int a = u & 0x7fffffffu;
  unsigned int r;
  if (a > 0x7f800000u) {
    r = 0x7fu;
  } else if (a >= 0x43e00000u) {  // >= 448
    r = 0x7eu;
  } else if (a < 0x3c800000u) {  // < 2^-6: m * 2^-9, m rounded to even by the 2^23 trick
    r = __float_as_uint(__uint_as_float(a) * 512.0f + 8388608.0f) - 0x4b000000u;
  } else {
    a += 0x7ffffu + ((a >> 20) & 1u);
    r = (a >> 20) - (120u << 3);
  }
  af_fp8e4m3 o;
  o.bits = (unsigned char)(r | sign);
  return o;
}

// A vector of N elements of T, aligned to its size, for 16-byte accesses.
template <typename T, int N>
struct alignas(sizeof(T) * N) af_vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ af_vec<T, N> af_load(const T* p, long long i) {
  return *reinterpret_cast<const af_vec<T, N>*>(p + i);
}

template <typename T, int N>
__device__ __forceinline__ void af_store(T* p, long long i, af_vec<T, N> x) {
  *reinterpret_cast<af_vec<T, N>*>(p + i) = x;
}

// Warp-level matrix multiply-accumulate, D = A·B + C (the IR's
// Collective::Mma): each lane passes its fragments of A, B and C as the
// vendor's documentation lays them out (codegen/src/ir/mma.rs) and gets its
// fragment of D. A kernel calls these only on an arch that has the
// instruction (the verifier checks it).
#if defined(__CUDACC__)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
// mma.sync m16n8k16 (sm_80 and up): two 16-bit elements per 32-bit register.
#define AF_MMA_M16N8K16(name, T, ty)                                                        \
  __device__ __forceinline__ af_vec<float, 4> name(af_vec<T, 8> a, af_vec<T, 4> b,          \
                                                   af_vec<float, 4> c) {                    \
    const unsigned* ra = reinterpret_cast<const unsigned*>(&a);                             \
    const unsigned* rb = reinterpret_cast<const unsigned*>(&b);                             \
    af_vec<float, 4> d;                                                                     \
    asm("mma.sync.aligned.m16n8k16.row.col.f32." ty "." ty                                  \
        ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"                    \
        : "=f"(d.v[0]), "=f"(d.v[1]), "=f"(d.v[2]), "=f"(d.v[3])                            \
        : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]),           \
          "f"(c.v[0]), "f"(c.v[1]), "f"(c.v[2]), "f"(c.v[3]));                              \
    return d;                                                                               \
  }
AF_MMA_M16N8K16(af_mma_m16n8k16_f16, __half, "f16")
AF_MMA_M16N8K16(af_mma_m16n8k16_bf16, af_bf16, "bf16")
#undef AF_MMA_M16N8K16

// ldmatrix (the IR's Collective::LoadMatrix): count 8x8 matrices of 16-bit
// elements from shared memory, lane 8i + r naming row r of matrix i (at
// element `row` of `sm`); each lane gets two elements of each matrix, in
// mma.m16n8k16's fragment layout (.trans: of the transposed matrix).
template <typename T>
__device__ __forceinline__ af_vec<T, 2> af_ldmatrix_x1(const T* sm, int row) {
  unsigned a = (unsigned)__cvta_generic_to_shared(sm + row);
  af_vec<T, 2> r;
  unsigned* d = reinterpret_cast<unsigned*>(&r);
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(d[0]) : "r"(a));
  return r;
}
template <typename T>
__device__ __forceinline__ af_vec<T, 2> af_ldmatrix_x1_trans(const T* sm, int row) {
  unsigned a = (unsigned)__cvta_generic_to_shared(sm + row);
  af_vec<T, 2> r;
  unsigned* d = reinterpret_cast<unsigned*>(&r);
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(d[0]) : "r"(a));
  return r;
}
template <typename T>
__device__ __forceinline__ af_vec<T, 4> af_ldmatrix_x2(const T* sm, int row) {
  unsigned a = (unsigned)__cvta_generic_to_shared(sm + row);
  af_vec<T, 4> r;
  unsigned* d = reinterpret_cast<unsigned*>(&r);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(d[0]), "=r"(d[1]) : "r"(a));
  return r;
}
template <typename T>
__device__ __forceinline__ af_vec<T, 4> af_ldmatrix_x2_trans(const T* sm, int row) {
  unsigned a = (unsigned)__cvta_generic_to_shared(sm + row);
  af_vec<T, 4> r;
  unsigned* d = reinterpret_cast<unsigned*>(&r);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(d[0]), "=r"(d[1]) : "r"(a));
  return r;
}
template <typename T>
__device__ __forceinline__ af_vec<T, 8> af_ldmatrix_x4(const T* sm, int row) {
  unsigned a = (unsigned)__cvta_generic_to_shared(sm + row);
  af_vec<T, 8> r;
  unsigned* d = reinterpret_cast<unsigned*>(&r);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(a));
  return r;
}
template <typename T>
__device__ __forceinline__ af_vec<T, 8> af_ldmatrix_x4_trans(const T* sm, int row) {
  unsigned a = (unsigned)__cvta_generic_to_shared(sm + row);
  af_vec<T, 8> r;
  unsigned* d = reinterpret_cast<unsigned*>(&r);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(a));
  return r;
}
#endif
#elif defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__)
// MFMA (CDNA2 and CDNA3): four 16-bit elements of A and of B per lane; the
// bf16 "_1k" forms take bf16 as 16-bit integers.
typedef _Float16 af_f16x4_t __attribute__((ext_vector_type(4)));
typedef short af_i16x4_t __attribute__((ext_vector_type(4)));
typedef float af_f32x4_t __attribute__((ext_vector_type(4)));
typedef float af_f32x16_t __attribute__((ext_vector_type(16)));
#define AF_MFMA(name, builtin, T, in_t, N, acc_t)                                           \
  __device__ __forceinline__ af_vec<float, N> name(af_vec<T, 4> a, af_vec<T, 4> b,          \
                                                   af_vec<float, N> c) {                    \
    acc_t d = builtin(__builtin_bit_cast(in_t, a), __builtin_bit_cast(in_t, b),             \
                      __builtin_bit_cast(acc_t, c), 0, 0, 0);                               \
    return __builtin_bit_cast(af_vec<float, N>, d);                                         \
  }
AF_MFMA(af_mfma_f32_32x32x8f16, __builtin_amdgcn_mfma_f32_32x32x8f16, __half, af_f16x4_t, 16,
        af_f32x16_t)
AF_MFMA(af_mfma_f32_32x32x8bf16_1k, __builtin_amdgcn_mfma_f32_32x32x8bf16_1k, af_bf16,
        af_i16x4_t, 16, af_f32x16_t)
AF_MFMA(af_mfma_f32_16x16x16f16, __builtin_amdgcn_mfma_f32_16x16x16f16, __half, af_f16x4_t, 4,
        af_f32x4_t)
AF_MFMA(af_mfma_f32_16x16x16bf16_1k, __builtin_amdgcn_mfma_f32_16x16x16bf16_1k, af_bf16,
        af_i16x4_t, 4, af_f32x4_t)
#undef AF_MFMA
#endif

// Elementwise arithmetic on f32 vectors (the host schedules use it; GPU
// kernels may).
#define AF_VEC_OP(op)                                                          \
  template <int N>                                                             \
  __device__ __forceinline__ af_vec<float, N> operator op(af_vec<float, N> a, \
                                                          af_vec<float, N> b) { \
    af_vec<float, N> r;                                                        \
    _Pragma("unroll") for (int i = 0; i < N; ++i) r.v[i] = a.v[i] op b.v[i];  \
    return r;                                                                  \
  }
AF_VEC_OP(+)
AF_VEC_OP(-)
AF_VEC_OP(*)
AF_VEC_OP(/)
#undef AF_VEC_OP

template <int N>
__device__ __forceinline__ af_vec<float, N> af_fma(af_vec<float, N> a, af_vec<float, N> b,
                                                   af_vec<float, N> c) {
  af_vec<float, N> r;
#pragma unroll
  for (int i = 0; i < N; ++i) r.v[i] = fmaf(a.v[i], b.v[i], c.v[i]);
  return r;
}

// 2^x. On NVIDIA the approximate instruction, flushing results below
// 2^-126 to zero (about 2 ulp; what the CPU backend's inline exp2 does too);
// exp2f elsewhere (AMD's is v_exp_f32).
__device__ __forceinline__ float af_exp2f(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

template <int N>
__device__ __forceinline__ af_vec<float, N> af_exp2(af_vec<float, N> a) {
  af_vec<float, N> r;
#pragma unroll
  for (int i = 0; i < N; ++i) r.v[i] = af_exp2f(a.v[i]);
  return r;
}

// Elementwise conversion through f32 (round to nearest even).
template <typename T>
struct af_tag {};
__device__ __forceinline__ float af_from_f32(float x, af_tag<float>) { return x; }
__device__ __forceinline__ __half af_from_f32(float x, af_tag<__half>) { return af_f32_to_f16(x); }
__device__ __forceinline__ af_bf16 af_from_f32(float x, af_tag<af_bf16>) {
  return af_f32_to_bf16(x);
}
template <typename To, typename From, int N>
__device__ __forceinline__ af_vec<To, N> af_cvt(af_vec<From, N> x) {
  af_vec<To, N> r;
#pragma unroll
  for (int i = 0; i < N; ++i) r.v[i] = af_from_f32(af_to_f32(x.v[i]), af_tag<To>());
  return r;
}

// fp8 to f16, exact: on sm_89 and up two elements per instruction
// (cvt.rn.f16x2.e4m3x2), else through f32.
template <int N>
__device__ __forceinline__ af_vec<__half, N> af_cvt_fp8(af_vec<af_fp8e4m3, N> x, af_tag<__half>) {
  af_vec<__half, N> r;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#pragma unroll
  for (int i = 0; i < N; i += 2) {
    __nv_fp8x2_storage_t pair =
        (__nv_fp8x2_storage_t)(x.v[i].bits | ((unsigned short)x.v[i + 1].bits << 8));
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3);
    r.v[i] = __half(__half_raw{h.x});
    r.v[i + 1] = __half(__half_raw{h.y});
  }
#else
#pragma unroll
  for (int i = 0; i < N; ++i) r.v[i] = af_f32_to_f16(af_to_f32(x.v[i]));
#endif
  return r;
}
template <typename To, int N>
__device__ __forceinline__ af_vec<To, N> af_cvt_fp8(af_vec<af_fp8e4m3, N> x, af_tag<To>) {
  af_vec<To, N> r;
#pragma unroll
  for (int i = 0; i < N; ++i) r.v[i] = af_from_f32(af_to_f32(x.v[i]), af_tag<To>());
  return r;
}
template <typename To, int N>
__device__ __forceinline__ af_vec<To, N> af_cvt(af_vec<af_fp8e4m3, N> x) {
  return af_cvt_fp8(x, af_tag<To>());
}

// Butterfly reductions over the whole warp; every lane receives the result.
template <typename T>
__device__ __forceinline__ T af_warp_sum(T x) {
  for (int o = AF_WARP_SIZE / 2; o > 0; o >>= 1) x += af_shfl_xor(x, o, AF_WARP_SIZE);
  return x;
}

// max/min with fmaxf/fminf semantics on floats (a NaN operand is ignored).
__device__ __forceinline__ float af_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ float af_min(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ int af_max(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ int af_min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ unsigned af_max(unsigned a, unsigned b) { return a > b ? a : b; }
__device__ __forceinline__ unsigned af_min(unsigned a, unsigned b) { return a < b ? a : b; }
__device__ __forceinline__ long long af_max(long long a, long long b) { return a > b ? a : b; }
__device__ __forceinline__ long long af_min(long long a, long long b) { return a < b ? a : b; }

template <int N>
__device__ __forceinline__ af_vec<float, N> af_max(af_vec<float, N> a, af_vec<float, N> b) {
  af_vec<float, N> r;
#pragma unroll
  for (int i = 0; i < N; ++i) r.v[i] = fmaxf(a.v[i], b.v[i]);
  return r;
}
template <int N>
__device__ __forceinline__ af_vec<float, N> af_min(af_vec<float, N> a, af_vec<float, N> b) {
  af_vec<float, N> r;
#pragma unroll
  for (int i = 0; i < N; ++i) r.v[i] = fminf(a.v[i], b.v[i]);
  return r;
}

template <typename T>
__device__ __forceinline__ T af_warp_max(T x) {
  for (int o = AF_WARP_SIZE / 2; o > 0; o >>= 1) x = af_max(x, af_shfl_xor(x, o, AF_WARP_SIZE));
  return x;
}
