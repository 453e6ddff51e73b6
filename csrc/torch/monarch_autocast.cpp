// Autocast for the forward ops: under torch.autocast the inputs are cast to the *active*
// autocast dtype (torch.get_autocast_dtype(device)), unlike fly, which hard-casts to fp16.
// float64 inputs are left alone (autocast's standard eligibility rule).  Backward ops are not
// registered: autograd runs them in the dtypes the forward used.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace structops {
namespace torch_impl {
namespace {

template <c10::DeviceType kDevice>
struct AutocastOps {
  static at::Tensor cast(const at::Tensor& t) {
    return at::autocast::cached_cast(at::autocast::get_autocast_dtype(kDevice), t, kDevice);
  }
  template <class Sig>
  static c10::TypedOperatorHandle<Sig> op(const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").template typed<Sig>();
  }
  static constexpr c10::DispatchKey key() {
    return kDevice == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA : c10::DispatchKey::AutocastCPU;
  }

  static at::Tensor blockdiag_matmul(const at::Tensor& x, const at::Tensor& w) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(key());
    static auto h = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("structops::blockdiag_matmul");
    return h.call(cast(x), cast(w));
  }
  static at::Tensor monarch_matmul(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(key());
    static auto h = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("structops::monarch_matmul");
    return h.call(cast(x), cast(w1), cast(w2));
  }
  static std::tuple<at::Tensor, at::Tensor> monarch_matmul_fwd(const at::Tensor& x, const at::Tensor& w1,
                                                               const at::Tensor& w2) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(key());
    static auto h = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
        "structops::monarch_matmul_fwd");
    return h.call(cast(x), cast(w1), cast(w2));
  }

  static void register_all(torch::Library& m) {
    m.impl("blockdiag_matmul", &blockdiag_matmul);
    m.impl("monarch_matmul", &monarch_matmul);
    m.impl("monarch_matmul_fwd", &monarch_matmul_fwd);
  }
};

}  // namespace
}  // namespace torch_impl
}  // namespace structops

TORCH_LIBRARY_IMPL(structops, AutocastCPU, m) {
  structops::torch_impl::AutocastOps<c10::DeviceType::CPU>::register_all(m);
}
TORCH_LIBRARY_IMPL(structops, AutocastCUDA, m) {
  structops::torch_impl::AutocastOps<c10::DeviceType::CUDA>::register_all(m);
}
