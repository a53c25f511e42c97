// Stand-ins for the CUDA parts of torch's C++ API, for the EMULATED build of flashts._C (ext_build.py): the real
// binding files (csrc/bindings.cpp, csrc/*_bind.cpp) compiled against a CPU-only torch and linked with the real
// kernels compiled as host C++ under the emulation harness (ext_kernels.cpp, cuda_host.h). This directory comes
// first on the include path, so <ATen/cuda/CUDAContext.h>, <c10/cuda/CUDAGuard.h> and <c10/cuda/CUDAStream.h>
// resolve to the stubs next to this file, which include this header. It
//  * includes the torch headers the binding files use BEFORE the macros below, so torch's own declarations are
//    never rewritten (the include guards keep the files' later #includes from re-reading them);
//  * gives at::cuda::getCurrentCUDAStream / getCurrentDeviceProperties (the harness's device: its SM count and
//    shared-memory limit) and no-op device guards;
//  * makes the binding files accept CPU tensors where they ask for CUDA ones: `t.is_cuda()` reads `t.is_cpu()`,
//    and TORCH_LIBRARY_IMPL(ns, CUDA, m) registers the CPU dispatch key (the tensors handed to the emulated
//    kernels are CPU tensors; the harness runs the kernels on the host).
// Nothing else in the binding files changes: their checks, workspace sizing and launcher calls are the real code.
#pragma once

#include <cuda_runtime_api.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <optional>

namespace c10 {
namespace cuda {
// The null stream (the harness runs each launch to completion at once).
struct CUDAStream {
    cudaStream_t stream() const { return nullptr; }
    operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
struct CUDAGuard {
    explicit CUDAGuard(const c10::Device&) {}
};
}  // namespace cuda
}  // namespace c10

namespace at {
namespace cuda {
using c10::cuda::CUDAStream;
using c10::cuda::getCurrentCUDAStream;
inline cudaDeviceProp* getCurrentDeviceProperties() {
    static cudaDeviceProp prop = [] {
        cudaDeviceProp p{};
        int v = 0;
        cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0);
        p.multiProcessorCount = v;
        cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
        p.sharedMemPerBlockOptin = static_cast<size_t>(v);
        cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlock, 0);
        p.sharedMemPerBlock = static_cast<size_t>(v);
        p.major = 9;
        p.minor = 0;
        return p;
    }();
    return &prop;
}
struct OptionalCUDAGuard {
    explicit OptionalCUDAGuard(const c10::Device&) {}
    explicit OptionalCUDAGuard(std::optional<c10::Device>) {}
};
}  // namespace cuda
}  // namespace at

#define is_cuda is_cpu
#define CUDA CPU
