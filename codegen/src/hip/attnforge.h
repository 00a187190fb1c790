// attnforge device helpers.
//
// The HIP printer copies this file verbatim into every generated translation
// unit, after defining AF_WARP_SIZE (the target's warp size) and AF_BLOCK_DIM
// (the kernel's fixed block size), so that each unit compiles on its own with
// hipcc or hiprtc. Keep it free of anything target-specific beyond those two.
// hiprtc provides the HIP headers itself; hipcc needs them included.
#if !defined(__HIPCC_RTC__)
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#endif

#ifndef AF_WARP_SIZE
#error "AF_WARP_SIZE must be defined before attnforge.h"
#endif

// A kernel generated for wave64 must never be compiled for wave32 or back:
// its shuffles and reductions assume the warp size it was generated for.
#if defined(__HIP_DEVICE_COMPILE__) && defined(__AMDGCN_WAVEFRONT_SIZE)
static_assert(__AMDGCN_WAVEFRONT_SIZE == AF_WARP_SIZE,
              "attnforge: kernel generated for another wavefront size");
#endif

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
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = (unsigned short)(u >> 16);
  }
  return r;
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

// Butterfly reductions over the whole warp; every lane receives the result.
template <typename T>
__device__ __forceinline__ T af_warp_sum(T x) {
  for (int o = AF_WARP_SIZE / 2; o > 0; o >>= 1) x += __shfl_xor(x, o, AF_WARP_SIZE);
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

template <typename T>
__device__ __forceinline__ T af_warp_max(T x) {
  for (int o = AF_WARP_SIZE / 2; o > 0; o >>= 1) x = af_max(x, __shfl_xor(x, o, AF_WARP_SIZE));
  return x;
}
