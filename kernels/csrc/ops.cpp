// Registers the CUDA kernels as torch ops (vitforge_cuda::softmax, gelu, int_softmax, int_gelu) through PyTorch's stable
// C++ ABI (header-only, no ATen): the library keeps working across PyTorch versions and compiles in seconds.
// The caller passes the current CUDA stream; compress/kernels/cuda.py selects the device.
#include <optional>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "vitforge_kernels.h"

namespace {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

vitforge::DType dtype_of(const Tensor& x) {
  switch (x.scalar_type()) {
    case ScalarType::Float: return vitforge::kFloat32;
    case ScalarType::Half: return vitforge::kFloat16;
    case ScalarType::BFloat16: return vitforge::kBFloat16;
    default: STD_TORCH_CHECK(false, "vitforge kernels take float32, float16 or bfloat16 tensors");
  }
}

void check_cuda(cudaError_t err, const char* what) {
  STD_TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

bool is_f32_vector(const Tensor& t) { return t.is_cuda() && t.scalar_type() == ScalarType::Float && t.is_contiguous(); }

Tensor softmax(Tensor x, double scale, std::optional<Tensor> mask, std::vector<int64_t> geometry, int64_t poly,
               std::vector<double> codes, int64_t stream) {
  STD_TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1, "softmax takes a CUDA [rows, cols] tensor with unit column stride");
  STD_TORCH_CHECK(codes.empty() || codes.size() == 4, "codes are [eta, lo, step, qmax] or empty");
  vitforge::MaskView mv{nullptr, 1, 1, 0, 0, 0, 0};
  if (mask.has_value()) {
    STD_TORCH_CHECK(mask->is_cuda() && mask->scalar_type() == ScalarType::Float && geometry.size() == 6,
                    "mask must be a float32 CUDA view with 6 geometry values");
    mv = {static_cast<const float*>(mask->data_ptr()), geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5]};
  }
  vitforge::LogCodes lc{false, 0.f, 0.f, 1.f, 0.f};
  if (!codes.empty()) lc = {true, float(codes[0]), float(codes[1]), float(codes[2]), float(codes[3])};
  Tensor out = lc.enabled ? torch::stable::new_empty(x, x.sizes(), ScalarType::Byte) : torch::stable::empty_like(x);
  check_cuda(vitforge::softmax_forward(x.data_ptr(), out.data_ptr(), x.size(0), x.size(1), x.stride(0), dtype_of(x),
                                       float(scale), mv, int(poly), lc, reinterpret_cast<cudaStream_t>(stream)),
             "vitforge softmax kernel");
  return out;
}

Tensor gelu(Tensor x, std::optional<Tensor> bias, int64_t method, std::optional<Tensor> table, double inv_step,
            int64_t stream) {
  STD_TORCH_CHECK(x.is_cuda() && x.is_contiguous() && x.dim() >= 1, "gelu takes a contiguous CUDA tensor");
  const float* b = nullptr;
  if (bias.has_value()) {
    STD_TORCH_CHECK(is_f32_vector(*bias) && bias->numel() == x.size(-1),
                    "bias must be a contiguous float32 CUDA vector as long as x's last axis");
    b = static_cast<const float*>(bias->data_ptr());
  }
  const float* t = nullptr;
  int entries = 0;
  if (table.has_value()) {
    STD_TORCH_CHECK(is_f32_vector(*table) && table->numel() >= 2, "table must be a contiguous float32 CUDA vector of >= 2 values");
    t = static_cast<const float*>(table->data_ptr());
    entries = int(table->numel() - 1);
  }
  Tensor out = torch::stable::empty_like(x);
  check_cuda(vitforge::gelu_forward(x.data_ptr(), b, out.data_ptr(), x.numel(), x.size(-1), dtype_of(x), int(method), t,
                                    entries, float(inv_step), reinterpret_cast<cudaStream_t>(stream)),
             "vitforge gelu kernel");
  return out;
}

Tensor int_softmax(Tensor x, int64_t k, int64_t stream) {
  STD_TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous() && x.scalar_type() == ScalarType::Int,
                  "int_softmax takes a contiguous CUDA int32 [rows, cols] tensor");
  Tensor out = torch::stable::empty_like(x);
  check_cuda(vitforge::int_softmax_forward(static_cast<const int32_t*>(x.data_ptr()), static_cast<int32_t*>(out.data_ptr()),
                                           x.size(0), x.size(1), int(k), reinterpret_cast<cudaStream_t>(stream)),
             "vitforge int_softmax kernel");
  return out;
}

Tensor int_gelu(Tensor x, int64_t k, int64_t stream) {
  STD_TORCH_CHECK(x.is_cuda() && x.is_contiguous() && x.scalar_type() == ScalarType::Int,
                  "int_gelu takes a contiguous CUDA int32 tensor");
  Tensor out = torch::stable::empty_like(x);
  check_cuda(vitforge::int_gelu_forward(static_cast<const int32_t*>(x.data_ptr()), static_cast<int32_t*>(out.data_ptr()),
                                        x.numel(), int(k), reinterpret_cast<cudaStream_t>(stream)),
             "vitforge int_gelu kernel");
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY(vitforge_cuda, m) {
  m.def("softmax(Tensor x, float scale, Tensor? mask, int[] geometry, int poly, float[] codes, int stream) -> Tensor");
  m.def("gelu(Tensor x, Tensor? bias, int method, Tensor? table, float inv_step, int stream) -> Tensor");
  m.def("int_softmax(Tensor x, int k, int stream) -> Tensor");
  m.def("int_gelu(Tensor x, int k, int stream) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(vitforge_cuda, CompositeExplicitAutograd, m) {
  m.impl("softmax", TORCH_BOX(&softmax));
  m.impl("gelu", TORCH_BOX(&gelu));
  m.impl("int_softmax", TORCH_BOX(&int_softmax));
  m.impl("int_gelu", TORCH_BOX(&int_gelu));
}
