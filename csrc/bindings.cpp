// flashts._C — the only translation unit that includes torch. It checks tensors, takes the caller's stream and
// calls the plain C++ launchers declared by the kernel headers (csrc/<op>.h), which take pointers, sizes,
// strides and a cudaStream_t. Kernel issues add their launchers here.
#include <torch/extension.h>

#include <string>
#include <vector>

namespace {

// Which ops this build provides for backend="cuda" (read by flashts._backend).
std::vector<std::string> provided_ops() { return {}; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "flashts CUDA kernels";
    m.def("provided_ops", &provided_ops, "names of the ops this build implements for backend='cuda'");
}
