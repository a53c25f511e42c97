// Every csrc/*.cu compiled as host C++ under the emulation harness, in one translation unit, for the EMULATED build
// of flashts._C (ext_build.py links it with the real binding files). The launchers keep their C++ names, so the
// binding files' calls resolve to them.
//
// The build (ext_build.py) compiles the binding files at -O0 (they are mostly torch and pybind11 templates: the
// optimiser would double the build time for nothing measurable); the kernels run thousands of fibers, so this
// translation unit is optimised as emu_build.py's per-kernel libraries are (-O1).
#pragma GCC optimize("O1")
#define FLASHTS_HOST_EMU 1
#include "cuda_host.h"

#include "auto_correlation.cu"
#include "decode_step.cu"
#include "linear_attention.cu"
#include "prefix_scan.cu"
#include "sliding_window.cu"
