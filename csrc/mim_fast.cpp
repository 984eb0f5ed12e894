// mim_fast.cpp - Python module init for mim_fast._C and the op schemas.
//
// The op implementations live in the other csrc/*.cpp files and register
// their CPU kernels with TORCH_LIBRARY_IMPL; this file only declares the
// schemas (one TORCH_LIBRARY block per namespace is allowed) and gives the
// shared object a PyInit__C so that `import mim_fast._C` loads it, which runs
// the static registrations as a side effect.
#include <Python.h>

#include <torch/library.h>

#include "output_pool.h"
#include "tokenize.h"

static PyModuleDef mim_fast_c_module = {
    PyModuleDef_HEAD_INIT,
    "_C",     // m_name
    nullptr,  // m_doc
    -1,       // m_size
    nullptr,  // m_methods
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mim_fast_c_module); }

TORCH_LIBRARY(mim_fast, m) {
  // band_dropout.cpp
  m.def("cpu_band_dropout_mask(Tensor seed, Tensor rate, int batch_size, int num_bands) -> Tensor");
  m.def("cpu_philox_uniform(Tensor seed, int n) -> Tensor");
  m.def("cpu_band_dropout_apply(Tensor x, Tensor keep) -> Tensor");
  // patch_embed.cpp
  m.def("cpu_patch_embed(Tensor x, Tensor weight, Tensor? bias, Tensor? keep, int patch_size) -> Tensor");
  m.def("cpu_patchify(Tensor x, Tensor? keep, int patch_size) -> Tensor");
  m.def(
      "cpu_patch_embed_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? keep, int patch_size, "
      "bool need_x, bool need_weight, bool need_bias) -> (Tensor, Tensor, Tensor)");
  // masked_gather.cpp
  m.def("cpu_gather_indices(Tensor keep) -> (Tensor, Tensor)");
  m.def("cpu_pack_rows(Tensor x, Tensor indices, Tensor mask) -> Tensor");
  m.def("cpu_unpack_rows(Tensor tokens, Tensor indices, Tensor mask, int num_tokens) -> Tensor");
  // tokenize.cpp
  m.def("cpu_token_patches(Tensor x, Tensor? keep, Tensor work, Tensor tables, int patch_size) -> Tensor");
  m.def(
      "cpu_token_patches_backward(Tensor grad_patches, int[] x_shape, Tensor? keep, Tensor work, Tensor tables, "
      "int patch_size) -> Tensor");
  // fold_weight.cpp
  m.def("cpu_fold_weight(Tensor weight, Tensor row_w, Tensor col_w) -> Tensor");
  m.def("cpu_unfold_weight(Tensor grad_folded, Tensor row_w, Tensor col_w) -> Tensor");
  // token_layout.cpp
  m.def(
      "cpu_token_layout(Tensor chosen, int max_len, int[] offsets, int[] strides, int[] grids, Tensor[] row_classes, "
      "Tensor[] col_classes, int[] split) -> (Tensor, Tensor, Tensor, Tensor[])");
  // tokenize_rows.cpp
  m.def(
      "cpu_tokenize_rows(Tensor[] xs, Tensor[] weights, Tensor[] biases, Tensor[] keeps, Tensor[] works, "
      "Tensor[] tables, Tensor[] folds, int[] patch_sizes, int num_rows, bool save_patches) -> (Tensor, Tensor[])");
  m.def(
      "cpu_tokenize_rows_backward(Tensor grad, Tensor[] xs, Tensor[] weights, Tensor[] keeps, Tensor[] works, "
      "Tensor[] tables, Tensor[] folds, int[] patch_sizes, Tensor[] saved, bool[] need_x, bool[] need_weight, "
      "bool[] need_bias) -> Tensor[]");
  m.def("cpu_tokenize_scratch_bytes() -> int", &mim_fast::tokenize_scratch_bytes);
  m.def("cpu_tokenize_release_scratch() -> ()", &mim_fast::tokenize_release_scratch);
  // output_pool.cpp
  m.def("cpu_output_pool_idle_bytes() -> int", &mim_fast::output_pool_idle_bytes);
  m.def("cpu_output_pool_release() -> ()", &mim_fast::output_pool_release);
  // patch_disc.cpp
  m.def(
      "cpu_patch_disc(Tensor pred, Tensor target, Tensor keep, float tau, float threshold, bool mask_negatives, "
      "bool save_probs) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "cpu_patch_disc_backward(Tensor grad, Tensor pred, Tensor target, Tensor keep, Tensor probs, "
      "Tensor contributes, bool need_pred, bool need_target) -> (Tensor, Tensor)");
}
