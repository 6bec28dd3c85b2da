// Integer softmax (one block per row: block max, block sum, then the codes) and integer GELU (elementwise)
// on int32 codes; the math is integer_math.h, shared with the host build.
#include "integer_math.h"
#include "common.cuh"
#include "vitforge_kernels.h"

namespace vitforge {
namespace {

constexpr int kThreads = 256;

template <typename Op>
__device__ int32_t block_reduce(int32_t v, Op op, int32_t* shared) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = shared[0];
  for (int w = 1; w < kThreads / 32; ++w) v = op(v, shared[w]);
  return v;
}

struct MaxOp { __device__ int32_t operator()(int32_t a, int32_t b) const { return a > b ? a : b; } };
struct SumOp { __device__ int32_t operator()(int32_t a, int32_t b) const { return a + b; } };

__global__ void int_softmax_kernel(const int32_t* __restrict__ x, int32_t* __restrict__ out, int64_t cols, int k) {
  __shared__ int32_t shared[kThreads / 32];
  const int32_t* row = x + blockIdx.x * cols;
  int32_t* orow = out + blockIdx.x * cols;
  int32_t m = INT32_MIN;
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) m = row[c] > m ? row[c] : m;
  m = block_reduce(m, MaxOp{}, shared);
  int32_t s = 0;
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) s += intk::exp_term(intk::exp_arg(m - row[c], k));
  s = block_reduce(s, SumOp{}, shared);
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) orow[c] = intk::prob_code(intk::exp_term(intk::exp_arg(m - row[c], k)), s);
}

__global__ void int_gelu_kernel(const int32_t* __restrict__ x, int32_t* __restrict__ out, int64_t n, int k) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = intk::gelu_code(x[i], k);
}

}  // namespace

cudaError_t int_softmax_forward(const int32_t* x, int32_t* out, int64_t rows, int64_t cols, int k,
                                cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (rows > 0x7fffffffLL || cols > 65535 || k < 1 || k > 14) return cudaErrorInvalidValue;
  int_softmax_kernel<<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(x, out, cols, k);
  return cudaGetLastError();
}

cudaError_t int_gelu_forward(const int32_t* x, int32_t* out, int64_t n, int k, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (k < 0 || k > 14) return cudaErrorInvalidValue;
  int_gelu_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(x, out, n, k);
  return cudaGetLastError();
}

}  // namespace vitforge
