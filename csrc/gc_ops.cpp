// Schemas of the GC block ops, declared once (kernels: cpu/gc_ops_cpu.cpp, cuda/gc_kernels.cu;
// host glue: gc_ops.h; Python side: gcrepro/ops/fused.py adds fake kernels and autograd).
#include <Python.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/output_pool.h"
#include "cpu/stream_store.h"

#include <exception>

namespace {
// gcrepro._C.cpu_isa() -> "avx2" | "baseline": the vector ISA the CPU kernels run (cpu/isa.h).
PyObject* py_cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(gcrepro::cpu::cpu_isa_name()); }

// gcrepro._C.cpu_output_pool() -> dict of OutputPoolStats (cpu/output_pool.h); ValueError for a
// bad GCREPRO_CPU_POOL_MB.
PyObject* py_cpu_output_pool(PyObject*, PyObject*) {
  try {
    const gcrepro::OutputPoolStats s = gcrepro::output_pool_stats();
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L}", "cap_bytes", (long long)s.cap_bytes, "cached_bytes",
                         (long long)s.cached_bytes, "cached_blocks", (long long)s.cached_blocks, "live_bytes",
                         (long long)s.live_bytes, "hits", (long long)s.hits, "misses", (long long)s.misses);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}

// gcrepro._C.release_cpu_output_pool() -> bytes freed (the kept blocks).
PyObject* py_release_cpu_output_pool(PyObject*, PyObject*) {
  try {
    return PyLong_FromLongLong(gcrepro::output_pool_release());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}

// gcrepro._C.cpu_last_level_cache_bytes() -> the cache size that decides streaming stores.
PyObject* py_cpu_llc(PyObject*, PyObject*) { return PyLong_FromLongLong(gcrepro::last_level_cache_bytes()); }

PyMethodDef methods[] = {
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "The vector ISA the CPU kernels run: 'avx2' or 'baseline'."},
    {"cpu_last_level_cache_bytes", py_cpu_llc, METH_NOARGS,
     "Bytes of the last-level cache; fp32 outputs larger than half of it are written with streaming stores."},
    {"cpu_output_pool", py_cpu_output_pool, METH_NOARGS, "Counters of the pool of large CPU outputs."},
    {"release_cpu_output_pool", py_release_cpu_output_pool, METH_NOARGS,
     "Free the pool's kept blocks; returns the bytes freed."},
    {nullptr, nullptr, 0, nullptr},
};
}  // namespace

extern "C" {
// `import gcrepro._C` loads this library, which registers the ops below with the dispatcher.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(gcrepro, m) {
  // Attention pooling of a GC block in one pass over x: logits = w . x + b, softmax over H*W,
  // context = sum_j softmax_j x[:, :, j] -> (context [N, C] (x's dtype), lse [N] (fp32; fp64 for fp64 x)).
  m.def("gc_context(Tensor x, Tensor w, Tensor? b) -> (Tensor, Tensor)");
  // -> (grad_x (+ grad_x_add, summed in the same pass), grad_w); grad_b = sum(grad_lse) needs no kernel.
  m.def("gc_context_backward(Tensor grad_context, Tensor? grad_lse, Tensor x, Tensor w, Tensor? b, "
        "Tensor context, Tensor lse, Tensor? grad_x_add=None) -> (Tensor, Tensor)");
  // out = x + t[:, :, None, None] (+ residual) (then ReLU).
  m.def("gc_add(Tensor x, Tensor t, Tensor? residual, bool relu) -> Tensor");
  // -> (grad_in = grad_out * (out > 0), grad_t = grad_in summed over H*W [N, C] (fp32; fp64 for fp64)).
  m.def("gc_add_relu_backward(Tensor grad_out, Tensor out) -> (Tensor, Tensor)");
}
