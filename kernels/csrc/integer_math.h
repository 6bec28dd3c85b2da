// The integer softmax and GELU of compress/kernels/integer.py, one element at a time: int32 only, every
// shifted or divided value non-negative (so C shifts and truncating division give the reference's bits).
// Shared by the CUDA kernels (integer.cu) and the host build the tests run (integer_host.cpp).
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define VF_HD __host__ __device__ __forceinline__
#else
#define VF_HD inline
#endif

namespace vitforge {
namespace intk {

constexpr int32_t kL14 = 23637;                      // log2(e) in Q14
constexpr int32_t kB1 = 351221, kB2 = 87, kY1 = 1 << 29;  // 2^-f ~ 1 - b1 f + b2 f^2, f in Q10, result in Q29

// t = (max - code) log2(e) in Q10 (int32: (max - code) * kL14 = max T - T)
VF_HD int32_t exp_arg(int32_t n, int k) { return (n * kL14) >> (k + 4); }

// 2^-(t 2^-10) in Q15 for t = (max T - T) >> (k + 4) >= 0, T = code * kL14
VF_HD int32_t exp_term(int32_t t) {
  const int32_t q = t >> 10, f = t - (q << 10);
  const int32_t y = kY1 - f * (kB1 - kB2 * f);
  return y >> ((q < 16 ? q : 16) + 14);
}

// the probability code (scale 2^-30) of one term of a row whose terms sum to s
VF_HD int32_t prob_code(int32_t e, int32_t s) { return e * ((1 << 30) / s); }

// GELU of one code of scale 2^-k, same scale out: relu(x) - |x| Phi(-|x|), Phi(-|x|) = r^2 in Q15
VF_HD int32_t gelu_code(int32_t i, int k) {
  // round(1.769 sqrt(2) 2^k) and round(sqrt(0.2888 2^13) 2^(20-k)) (local: usable in device code)
  constexpr int32_t knee[15] = {3, 5, 10, 20, 40, 80, 160, 320, 640, 1281, 2562, 5124, 10247, 20494, 40989};
  constexpr int32_t root[15] = {51004358, 25502179, 12751089, 6375545, 3187772, 1593886, 796943, 398472, 199236, 99618, 49809, 24904, 12452, 6226, 3113};
  const int32_t a = i < 0 ? -i : i, c = knee[k];
  const int32_t r = ((c - (a < c ? a : c)) * root[k]) >> 20;
  return (i > 0 ? i : 0) - ((a * (r * r)) >> 15);
}

}  // namespace intk
}  // namespace vitforge
