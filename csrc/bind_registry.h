// flashts — registration hooks of the per-op binding files (csrc/*_bind.cpp). bindings.cpp calls each from
// its PYBIND11_MODULE, so an op's torch glue lives next to its kernels instead of in one shared file.
// (Host-only header, included by .cpp files only; it includes pybind11, never torch.)
#pragma once

#include <pybind11/pybind11.h>

// Adds linear_attention_fwd / linear_attention_bwd (csrc/linear_attention_bind.cpp).
void register_linear_attention(pybind11::module_& m);

// Adds sliding_window_attention_fwd / sliding_window_attention_bwd (csrc/sliding_window_bind.cpp).
void register_sliding_window(pybind11::module_& m);
