// Row softmax, one thread block per row, the single-pass form of Edge-MoE: each thread keeps a running max
// and sum over its elements (rescaling the sum only when its max grows), the block merges the (max, sum)
// pairs, then a second sweep writes probabilities or log-domain codes. The scaled logits are cached in
// shared memory when the row fits, so x is read from global memory once.
#include <cfloat>
#include <cmath>

#include "common.cuh"
#include "vitforge_kernels.h"

namespace vitforge {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int64_t kCacheMax = 12288;  // floats of a row cached in shared memory (48 KB)

// e^d (POLY 0) or 2^d = P(frac d) * 2^floor(d) built in the exponent bits (POLY 1..3); 0 below 2^-126.
template <int POLY>
__device__ __forceinline__ float exp_(float d) {
  if (POLY == 0) return expf(d);
  d = fmaxf(d, -127.f);
  const float k = floorf(d), f = d - k;
  float p;
  if (POLY == 1) p = 1.f + f;
  else if (POLY == 2) p = 1.f + f * (0.6602339f + f * 0.3397661f);
  else p = 1.f + f * (0.6954244f + f * (0.2263077f + f * 0.0782679f));
  const int ki = static_cast<int>(k);
  return ki < -126 ? 0.f : p * __int_as_float((ki + 127) << 23);
}

__device__ __forceinline__ float safe(float m) { return m == -INFINITY ? 0.f : m; }

// add one logit to a running (max, sum); with POLY the max is an integer, so rescales are exact shifts
template <int POLY>
__device__ __forceinline__ void update(float& m, float& s, float z) {
  const float zm = POLY ? ceilf(z) : z;
  if (zm > m) {
    s = (m == -INFINITY ? 0.f : s * exp_<POLY>(m - zm)) + exp_<POLY>(z - zm);
    m = zm;
  } else {
    s += exp_<POLY>(z - safe(m));
  }
}

template <int POLY>
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2), ms = safe(mn);
  s = (m == -INFINITY ? 0.f : s * exp_<POLY>(m - ms)) + (m2 == -INFINITY ? 0.f : s2 * exp_<POLY>(m2 - ms));
  m = mn;
}

template <int POLY>
__device__ void block_merge(float& m, float& s) {
  __shared__ float wm[32], ws[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  for (int o = 16; o > 0; o >>= 1) merge<POLY>(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  if (lane == 0) { wm[warp] = m; ws[warp] = s; }
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? wm[lane] : -INFINITY;
    s = lane < warps ? ws[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) merge<POLY>(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) { wm[0] = m; ws[0] = s; }
  }
  __syncthreads();
  m = wm[0];
  s = ws[0];
}

template <typename T, int POLY>
__device__ __forceinline__ float logit(const T* xr, const float* mr, int64_t j, float scale, int64_t sn) {
  float z = to_f32(xr[j]) * scale;
  if (mr) z += mr[j * sn];
  return POLY ? z * kLog2e : z;
}

template <typename T, int POLY, bool CODES>
__global__ void softmax_kernel(const T* __restrict__ x, void* __restrict__ out, int64_t cols, int64_t x_stride,
                               float scale, MaskView mask, LogCodes codes, bool cached) {
  extern __shared__ float cache[];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  const float* mr = nullptr;
  if (mask.ptr) {
    const int64_t a = row / (mask.B * mask.C), b = (row / mask.C) % mask.B, c = row % mask.C;
    mr = mask.ptr + a * mask.sa + b * mask.sb + c * mask.sc;
  }
  float m = -INFINITY, s = 0.f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {  // the single pass over x
    const float z = logit<T, POLY>(xr, mr, j, scale, mask.sn);
    if (cached) cache[j] = z;
    update<POLY>(m, s, z);
  }
  block_merge<POLY>(m, s);
  const float ms = safe(m);
  const bool ok = s > 0.f;  // fully masked rows write zeros
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float z = cached ? cache[j] : logit<T, POLY>(xr, mr, j, scale, mask.sn);
    const float p = ok ? exp_<POLY>(z - ms) / s : 0.f;
    if (CODES) {
      float q = floorf((log2f(p + codes.eta) - codes.lo) / codes.step + 0.5f);
      q = fminf(fmaxf(q, 0.f), codes.qmax);
      static_cast<uint8_t*>(out)[row * cols + j] = static_cast<uint8_t>(q);
    } else {
      static_cast<T*>(out)[row * cols + j] = from_f32<T>(p);
    }
  }
}

template <typename T, int POLY, bool CODES>
cudaError_t launch(const void* x, void* out, int64_t rows, int64_t cols, int64_t x_stride, float scale,
                   MaskView mask, LogCodes codes, cudaStream_t stream) {
  int threads = 64;
  while (threads < 1024 && threads * 8 < cols) threads *= 2;
  const bool cached = cols <= kCacheMax;
  const size_t smem = cached ? static_cast<size_t>(cols) * sizeof(float) : 0;
  softmax_kernel<T, POLY, CODES><<<static_cast<unsigned int>(rows), threads, smem, stream>>>(
      static_cast<const T*>(x), out, cols, x_stride, scale, mask, codes, cached);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch(const void* x, void* out, int64_t rows, int64_t cols, int64_t x_stride, float scale,
                     MaskView mask, int poly, LogCodes codes, cudaStream_t st) {
#define VITFORGE_SOFTMAX(P)                                                              \
  return codes.enabled ? launch<T, P, true>(x, out, rows, cols, x_stride, scale, mask, codes, st) \
                       : launch<T, P, false>(x, out, rows, cols, x_stride, scale, mask, codes, st)
  switch (poly) {
    case 0: VITFORGE_SOFTMAX(0);
    case 1: VITFORGE_SOFTMAX(1);
    case 2: VITFORGE_SOFTMAX(2);
    case 3: VITFORGE_SOFTMAX(3);
    default: return cudaErrorInvalidValue;
  }
#undef VITFORGE_SOFTMAX
}

}  // namespace

cudaError_t softmax_forward(const void* x, void* out, int64_t rows, int64_t cols, int64_t x_stride, DType dtype,
                            float scale, MaskView mask, int poly, LogCodes codes, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (rows > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  switch (dtype) {
    case kFloat32: return dispatch<float>(x, out, rows, cols, x_stride, scale, mask, poly, codes, stream);
    case kFloat16: return dispatch<__half>(x, out, rows, cols, x_stride, scale, mask, poly, codes, stream);
    case kBFloat16: return dispatch<__nv_bfloat16>(x, out, rows, cols, x_stride, scale, mask, poly, codes, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vitforge
