// Schemas of the GC block ops, declared once (kernels: cpu/gc_ops_cpu.cpp, cuda/gc_kernels.cu;
// host glue: gc_ops.h and gc_block.h; the autograd kernel of gc_block: autograd/gc_block_autograd.h;
// Python side: gcrepro/ops/fused.py and block.py add the fake kernels torch.compile traces).
#include <Python.h>
#include <torch/library.h>

#include "autograd/gc_block_autograd.h"
#include "cpu/isa.h"
#include "cuda/launch_plan.h"

#include <string>
#include <vector>

extern "C" {
// `import gcrepro._C` loads this library, which registers the ops below with the dispatcher
// (an empty module, as in pytorch/extension-cpp: everything is reached through torch.ops.gcrepro).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(gcrepro, m) {
  // Attention pooling of a GC block in one pass over x: logits = w . x + b, softmax over H*W,
  // context = sum_j softmax_j x[:, :, j] -> (context [N, C], lse [N]), fp32 (fp64 for fp64 x).
  m.def("gc_context(Tensor x, Tensor w, Tensor? b) -> (Tensor, Tensor)");
  // -> (grad_x (+ grad_x_add, summed in the same pass), grad_w); grad_b = sum(grad_lse) needs no kernel.
  m.def("gc_context_backward(Tensor grad_context, Tensor? grad_lse, Tensor x, Tensor w, Tensor? b, "
        "Tensor context, Tensor lse, Tensor? grad_x_add=None) -> (Tensor, Tensor)");
  // out = x + t[:, :, None, None] (+ residual) (then ReLU).
  m.def("gc_add(Tensor x, Tensor t, Tensor? residual, bool relu) -> Tensor");
  // -> (grad_in = grad_out * (out > 0), grad_t = grad_in summed over H*W [N, C] (fp32; fp64 for fp64)).
  m.def("gc_add_relu_backward(Tensor grad_out, Tensor out) -> (Tensor, Tensor)");
  // The paper's whole GC block, differentiable (gc_block.h): out = x + T(context(x)) (+ residual)
  // (then ReLU), T = conv1 (w1 [P, C, 1, 1], b1) -> LayerNorm (ln_w, ln_b [P, 1, 1], ln_eps) -> ReLU ->
  // conv2 (w2 [C, P, 1, 1], b2). -> (out, context [N, C], lse [N], h [N, P], mean [N, 1], rstd [N, 1],
  // a [N, P]): out in x's dtype and layout; the rest, in the accumulation dtype, is what the backward
  // needs (non-differentiable, like native_layer_norm's mean and rstd).
  m.def("gc_block(Tensor x, Tensor mask_w, Tensor? mask_b, Tensor w1, Tensor b1, Tensor ln_w, Tensor ln_b, "
        "float ln_eps, Tensor w2, Tensor b2, Tensor? residual, bool relu) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Its backward from what it saved -> (grad_x, grads of mask_w, w1, b1, ln_w, ln_b, w2, b2 (each shaped
  // and typed like its parameter), grad_in: the residual's gradient with relu, else an empty [0]).
  m.def("gc_block_backward(Tensor grad_out, Tensor x, Tensor mask_w, Tensor? mask_b, Tensor w1, Tensor b1, "
        "Tensor ln_w, Tensor ln_b, Tensor w2, Tensor b2, Tensor context, Tensor lse, Tensor h, Tensor mean, "
        "Tensor rstd, Tensor a, Tensor? out, bool relu) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The vector ISA the CPU kernels run: "avx2" or "baseline" (cpu/isa.h).
  m.def("cpu_isa() -> str", [] { return std::string(gcrepro::cpu::cpu_isa_name()); });
  // The split the CUDA gc_context kernels use for a batch of N samples of H*W positions on a GPU
  // with `sms` multiprocessors: [positions per block, blocks per sample, threads per block, largest
  // batch] (cuda/launch_plan.h). Host arithmetic only: the CPU tests check it without a GPU.
  m.def("cuda_context_plan(int N, int HW, bool channels_last, int sms) -> int[]",
        [](int64_t N, int64_t HW, bool channels_last, int64_t sms) {
          const gcrepro::ContextPlan plan = gcrepro::context_plan(N, HW, channels_last, sms);
          return std::vector<int64_t>{plan.positions, plan.chunks, plan.threads, gcrepro::kMaxGridY};
        });
}

TORCH_LIBRARY_IMPL(gcrepro, Autograd, m) { m.impl("gc_block", &gcrepro::autograd::gc_block_autograd); }
