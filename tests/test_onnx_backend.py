"""ONNX's own conformance tests through fastcnn: onnx.backend.test.BackendTest runs the node
tests of the CNN families (and the pytorch-converted / pytorch-operator models) on
fastcnn.onnx.Backend, which converts each graph with fastcnn's importer and runs the fastcnn
model. The cases fastcnn cannot express are listed in EXCLUDED by reason; each of them must
fail with fastcnn's clear OnnxImportError (UnsupportedOnnxError names the node), never with a
wrong answer or a crash. The real-model tests (downloads) are not included.

The counts per family are in README.md (ONNX, conformance); `python tests/test_onnx_backend.py`
prints them."""
import re
import warnings

import pytest

from onnx_helpers import reference

onnx = reference("onnx")
import onnx.backend.test  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402

from fastcnn.onnx import Backend, OnnxImportError  # noqa: E402

# the families of issue 15, as regular expressions over the case names
FAMILIES = {
    "conv": r"test_conv_", "convtranspose": r"test_convtranspose", "maxpool": r"test_maxpool",
    "averagepool": r"test_averagepool", "globalaveragepool/globalmaxpool": r"test_global",
    "lppool": r"test_lppool", "maxunpool": r"test_maxunpool", "batchnorm": r"test_batchnorm",
    "instancenorm": r"test_instancenorm", "group_normalization": r"test_group_normalization",
    "layer_normalization": r"test_layer_normalization",
    "activations": r"test_(relu|leakyrelu|elu|selu|gelu|sigmoid|tanh|prelu|hardsigmoid|softplus"
                   r"|softsign|hardswish|mish|celu|thresholdedrelu)(_|$)",
    "softmax/logsoftmax": r"test_(softmax|logsoftmax)_", "gemm": r"test_gemm",
    "matmul": r"test_matmul_", "flatten": r"test_flatten", "reshape": r"test_reshape",
    "concat": r"test_concat", "add/sub/mul/div": r"test_(add|sub|mul|div)(_|$)",
    "resize/upsample": r"test_(resize|upsample)", "pad": r"test_(edge|reflect|wrap|constant)_pad",
    "dropout": r"test_dropout",
}
KINDS = ("pytorch-converted", "pytorch-operator")

EXCLUDED = {
    # integer or float16 data: fastcnn models compute in float32 or float64
    "dtype": (
        "test_Embedding", "test_Embedding_sparse", "test_add_int16", "test_add_int8",
        "test_add_uint16", "test_add_uint32", "test_add_uint64", "test_add_uint8",
        "test_celu_bfloat16", "test_celu_bfloat16_expanded", "test_celu_float16",
        "test_celu_float16_expanded", "test_div_int16", "test_div_int32_trunc", "test_div_int8",
        "test_div_uint16", "test_div_uint32", "test_div_uint64", "test_div_uint8",
        "test_edge_pad", "test_maxpool_2d_uint8", "test_mul_int16", "test_mul_int8",
        "test_mul_uint16", "test_mul_uint32", "test_mul_uint64", "test_mul_uint8",
        "test_operator_non_float_params", "test_reflect_pad", "test_sub_int16", "test_sub_int8",
        "test_sub_uint16", "test_sub_uint32", "test_sub_uint64", "test_sub_uint8",
        "test_wrap_pad",
    ),
    # 1-D data: a fastcnn model's input is (batch, *per-sample shape)
    "rank1": (
        "test_concat_1d_axis_0", "test_concat_1d_axis_negative_1", "test_div_example",
        "test_dropout_default_old", "test_elu_example", "test_elu_example_expanded_ver18",
        "test_gelu_default_1", "test_gelu_default_1_expanded", "test_gelu_tanh_1",
        "test_gelu_tanh_1_expanded", "test_hardsigmoid_example",
        "test_hardsigmoid_example_expanded_ver18", "test_leakyrelu_example",
        "test_leakyrelu_example_expanded", "test_matmul_1d_1d", "test_matmul_1d_3d", "test_mish",
        "test_mish_expanded", "test_mul_example", "test_operator_basic", "test_operator_chunk",
        "test_operator_symbolic_override_nested", "test_operator_view", "test_selu_example",
        "test_selu_example_expanded_ver18", "test_sigmoid_example", "test_softplus_example",
        "test_softplus_example_expanded_ver18", "test_softsign_example",
        "test_softsign_example_expanded_ver18", "test_sub_example", "test_tanh_example",
        "test_thresholdedrelu_example", "test_thresholdedrelu_example_expanded_ver18",
    ),
    # function-body expansions into generic reductions and arithmetic (ReduceMax, Pow, Sqrt, Exp, Mul of two tensors...)
    "expanded": (
        "test_celu_expanded", "test_elu_default_expanded_ver18", "test_elu_expanded_ver18",
        "test_gelu_default_2_expanded", "test_gelu_tanh_2_expanded",
        "test_group_normalization_epsilon_expanded", "test_group_normalization_example_expanded",
        "test_hardsigmoid_default_expanded_ver18", "test_hardsigmoid_expanded_ver18",
        "test_hardswish_expanded", "test_layer_normalization_2d_axis0_expanded",
        "test_layer_normalization_2d_axis0_expanded_ver18",
        "test_layer_normalization_2d_axis1_expanded",
        "test_layer_normalization_2d_axis1_expanded_ver18",
        "test_layer_normalization_2d_axis_negative_1_expanded",
        "test_layer_normalization_2d_axis_negative_1_expanded_ver18",
        "test_layer_normalization_2d_axis_negative_2_expanded",
        "test_layer_normalization_2d_axis_negative_2_expanded_ver18",
        "test_layer_normalization_3d_axis0_epsilon_expanded",
        "test_layer_normalization_3d_axis0_epsilon_expanded_ver18",
        "test_layer_normalization_3d_axis1_epsilon_expanded",
        "test_layer_normalization_3d_axis1_epsilon_expanded_ver18",
        "test_layer_normalization_3d_axis2_epsilon_expanded",
        "test_layer_normalization_3d_axis2_epsilon_expanded_ver18",
        "test_layer_normalization_3d_axis_negative_1_epsilon_expanded",
        "test_layer_normalization_3d_axis_negative_1_epsilon_expanded_ver18",
        "test_layer_normalization_3d_axis_negative_2_epsilon_expanded",
        "test_layer_normalization_3d_axis_negative_2_epsilon_expanded_ver18",
        "test_layer_normalization_3d_axis_negative_3_epsilon_expanded",
        "test_layer_normalization_3d_axis_negative_3_epsilon_expanded_ver18",
        "test_layer_normalization_4d_axis0_expanded",
        "test_layer_normalization_4d_axis0_expanded_ver18",
        "test_layer_normalization_4d_axis1_expanded",
        "test_layer_normalization_4d_axis1_expanded_ver18",
        "test_layer_normalization_4d_axis2_expanded",
        "test_layer_normalization_4d_axis2_expanded_ver18",
        "test_layer_normalization_4d_axis3_expanded",
        "test_layer_normalization_4d_axis3_expanded_ver18",
        "test_layer_normalization_4d_axis_negative_1_expanded",
        "test_layer_normalization_4d_axis_negative_1_expanded_ver18",
        "test_layer_normalization_4d_axis_negative_2_expanded",
        "test_layer_normalization_4d_axis_negative_2_expanded_ver18",
        "test_layer_normalization_4d_axis_negative_3_expanded",
        "test_layer_normalization_4d_axis_negative_3_expanded_ver18",
        "test_layer_normalization_4d_axis_negative_4_expanded",
        "test_layer_normalization_4d_axis_negative_4_expanded_ver18",
        "test_layer_normalization_default_axis_expanded",
        "test_layer_normalization_default_axis_expanded_ver18", "test_leakyrelu_default_expanded",
        "test_leakyrelu_expanded", "test_logsoftmax_axis_0_expanded",
        "test_logsoftmax_axis_0_expanded_ver18", "test_logsoftmax_axis_1_expanded",
        "test_logsoftmax_axis_1_expanded_ver18", "test_logsoftmax_axis_2_expanded",
        "test_logsoftmax_axis_2_expanded_ver18", "test_logsoftmax_default_axis_expanded",
        "test_logsoftmax_default_axis_expanded_ver18", "test_logsoftmax_example_1_expanded",
        "test_logsoftmax_example_1_expanded_ver18", "test_logsoftmax_large_number_expanded",
        "test_logsoftmax_large_number_expanded_ver18", "test_logsoftmax_negative_axis_expanded",
        "test_logsoftmax_negative_axis_expanded_ver18", "test_prelu_broadcast_expanded",
        "test_prelu_example_expanded", "test_relu_expanded_ver18",
        "test_selu_default_expanded_ver18", "test_selu_expanded_ver18",
        "test_softmax_axis_0_expanded", "test_softmax_axis_0_expanded_ver18",
        "test_softmax_axis_1_expanded", "test_softmax_axis_1_expanded_ver18",
        "test_softmax_axis_2_expanded", "test_softmax_axis_2_expanded_ver18",
        "test_softmax_default_axis_expanded", "test_softmax_default_axis_expanded_ver18",
        "test_softmax_example_expanded", "test_softmax_example_expanded_ver18",
        "test_softmax_large_number_expanded", "test_softmax_large_number_expanded_ver18",
        "test_softmax_negative_axis_expanded", "test_softmax_negative_axis_expanded_ver18",
        "test_softplus_expanded_ver18", "test_softsign_expanded_ver18",
        "test_thresholdedrelu_default_expanded_ver18", "test_thresholdedrelu_expanded_ver18",
    ),
    # moves, merges or mixes the batch axis, or feeds a second data tensor (bound as a constant, it varies along the batch): a fastcnn model is a per-sample function of one input
    "batch": (
        "test_add", "test_concat_2d_axis_0", "test_concat_2d_axis_1",
        "test_concat_2d_axis_negative_1", "test_concat_2d_axis_negative_2",
        "test_concat_3d_axis_0", "test_concat_3d_axis_1", "test_concat_3d_axis_2",
        "test_concat_3d_axis_negative_1", "test_concat_3d_axis_negative_2",
        "test_concat_3d_axis_negative_3", "test_div", "test_flatten_axis0", "test_flatten_axis2",
        "test_flatten_axis3", "test_flatten_negative_axis1", "test_flatten_negative_axis2",
        "test_flatten_negative_axis4", "test_gemm_all_attributes",
        "test_gemm_default_matrix_bias", "test_gemm_transposeA", "test_matmul_3d",
        "test_matmul_4d", "test_matmul_4d_1d", "test_matmul_bcast", "test_mul",
        "test_operator_add_size1_broadcast", "test_operator_addmm", "test_operator_concat2",
        "test_operator_params", "test_reshape_negative_extended_dims", "test_reshape_one_dim",
        "test_reshape_reordered_all_dims", "test_sub",
    ),
    # reads outputs fastcnn layers do not produce (LayerNormalization's Mean/InvStdDev, dropout masks, max-pool indices, batch norm's training outputs)
    "outputs": (
        "test_batchnorm_epsilon_training_mode", "test_batchnorm_example_training_mode",
        "test_dropout_default_mask", "test_dropout_default_mask_ratio",
        "test_layer_normalization_2d_axis0", "test_layer_normalization_2d_axis1",
        "test_layer_normalization_2d_axis_negative_1",
        "test_layer_normalization_2d_axis_negative_2",
        "test_layer_normalization_3d_axis0_epsilon", "test_layer_normalization_3d_axis1_epsilon",
        "test_layer_normalization_3d_axis2_epsilon",
        "test_layer_normalization_3d_axis_negative_1_epsilon",
        "test_layer_normalization_3d_axis_negative_2_epsilon",
        "test_layer_normalization_3d_axis_negative_3_epsilon",
        "test_layer_normalization_4d_axis0", "test_layer_normalization_4d_axis1",
        "test_layer_normalization_4d_axis2", "test_layer_normalization_4d_axis3",
        "test_layer_normalization_4d_axis_negative_1",
        "test_layer_normalization_4d_axis_negative_2",
        "test_layer_normalization_4d_axis_negative_3",
        "test_layer_normalization_4d_axis_negative_4", "test_layer_normalization_default_axis",
        "test_maxpool_with_argmax_2d_precomputed_pads",
        "test_maxpool_with_argmax_2d_precomputed_strides",
    ),
    # no fastcnn layer for the op or its attributes (LpPool, MaxUnpool, HardSigmoid, Softplus, Softsign, HardSwish, Mish, Celu, ThresholdedRelu, Selu with other constants, PRelu slopes not per channel, dilated average pooling, count_include_pad=0 with asymmetric pads, cubic / antialiased / cropping resizes and ONNX's own nearest modes, Split, Neg, Exp, Pow, Tile, Slice, Transpose, Min, Max, Sqrt, ReduceSum, a mean over one axis)
    "no_layer": (
        "test_GLU", "test_GLU_dim", "test_PixelShuffle", "test_PoissonNLLLLoss_no_reduce",
        "test_Softmin", "test_Softplus", "test_Softsign", "test_averagepool_2d_dilations",
        "test_averagepool_2d_pads", "test_averagepool_2d_same_lower",
        "test_averagepool_2d_same_upper",
        "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False",
        "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True",
        "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False",
        "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True",
        "test_averagepool_3d_dilations_small", "test_celu", "test_convtranspose_output_shape",
        "test_hardsigmoid", "test_hardsigmoid_default", "test_hardswish",
        "test_lppool_1d_default", "test_lppool_2d_default", "test_lppool_2d_dilations",
        "test_lppool_2d_pads", "test_lppool_2d_same_lower", "test_lppool_2d_same_upper",
        "test_lppool_2d_strides", "test_lppool_3d_default",
        "test_maxunpool_export_with_output_shape", "test_maxunpool_export_without_output_shape",
        "test_operator_exp", "test_operator_index", "test_operator_max",
        "test_operator_min", "test_operator_permute2", "test_operator_pow",
        "test_operator_reduced_mean", "test_operator_reduced_mean_keepdim",
        "test_operator_reduced_sum", "test_operator_reduced_sum_keepdim", "test_operator_repeat",
        "test_operator_repeat_dim_overflow", "test_operator_sqrt", "test_prelu_broadcast",
        "test_prelu_example", "test_reshape_allowzero_reordered",
        "test_resize_downsample_scales_cubic",
        "test_resize_downsample_scales_cubic_A_n0p5_exclude_outside",
        "test_resize_downsample_scales_cubic_align_corners",
        "test_resize_downsample_scales_cubic_antialias",
        "test_resize_downsample_scales_linear_align_corners",
        "test_resize_downsample_scales_linear_antialias",
        "test_resize_downsample_scales_linear_half_pixel_symmetric",
        "test_resize_downsample_scales_nearest", "test_resize_downsample_sizes_cubic",
        "test_resize_downsample_sizes_cubic_antialias",
        "test_resize_downsample_sizes_linear_antialias",
        "test_resize_downsample_sizes_linear_pytorch_half_pixel",
        "test_resize_downsample_sizes_nearest", "test_resize_downsample_sizes_nearest_not_larger",
        "test_resize_downsample_sizes_nearest_not_smaller", "test_resize_tf_crop_and_resize",
        "test_resize_tf_crop_and_resize_axes_2_3", "test_resize_tf_crop_and_resize_axes_3_2",
        "test_resize_tf_crop_and_resize_extrapolation_value", "test_resize_upsample_scales_cubic",
        "test_resize_upsample_scales_cubic_A_n0p5_exclude_outside",
        "test_resize_upsample_scales_cubic_align_corners",
        "test_resize_upsample_scales_cubic_asymmetric",
        "test_resize_upsample_scales_linear_half_pixel_symmetric",
        "test_resize_upsample_scales_nearest", "test_resize_upsample_scales_nearest_axes_2_3",
        "test_resize_upsample_scales_nearest_axes_3_2", "test_resize_upsample_sizes_cubic",
        "test_resize_upsample_sizes_nearest", "test_resize_upsample_sizes_nearest_axes_2_3",
        "test_resize_upsample_sizes_nearest_axes_3_2",
        "test_resize_upsample_sizes_nearest_ceil_half_pixel",
        "test_resize_upsample_sizes_nearest_floor_align_corners",
        "test_resize_upsample_sizes_nearest_not_larger",
        "test_resize_upsample_sizes_nearest_not_smaller",
        "test_resize_upsample_sizes_nearest_round_prefer_ceil_asymmetric", "test_selu",
        "test_softplus", "test_softsign", "test_thresholdedrelu", "test_thresholdedrelu_default",
        "test_upsample_nearest",
    ),
}


def _cases():
    """{name: TestCase} of every case in a family (node tests built in memory by onnx)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # onnx's own case generators warn on casts
        node = load_model_tests(kind="node")
    cases = {c.name: c for c in node if family_of(c.name)}
    for kind in KINDS:
        cases.update({c.name: c for c in load_model_tests(kind=kind)})
    return cases


def family_of(name):
    return next((f for f, p in FAMILIES.items() if re.match(p, name)), None)


EXCLUDED_NAMES = {n: reason for reason, names in EXCLUDED.items() for n in names}
CASES = _cases()

backend_test = onnx.backend.test.BackendTest(Backend, __name__)
INCLUDED = {f"{name}_cpu" for name in CASES if name not in EXCLUDED_NAMES}
for _name in INCLUDED:
    backend_test.include(f"^{re.escape(_name)}$")
for _class in backend_test.test_cases.values():
    # keep the included cases only: the thousands of others would show as skips
    for _attr in [a for a in vars(_class) if a.startswith("test_") and a not in INCLUDED]:
        delattr(_class, _attr)
    globals()[_class.__name__] = _class


def _run(case):
    import numpy as np

    if case.model is not None:
        model, data_sets = case.model, case.data_sets
    else:
        import glob
        import os
        model = onnx.load(os.path.join(case.model_dir, "model.onnx"))
        data_sets = []
        for folder in sorted(glob.glob(os.path.join(case.model_dir, "test_data_set*"))):
            read = lambda kind: [onnx.numpy_helper.to_array(onnx.load_tensor(f))  # noqa: E731
                                 for f in sorted(glob.glob(os.path.join(folder, kind)))]
            data_sets.append((read("input_*.pb"), read("output_*.pb")))
    rep = Backend.prepare(model)
    for inputs, outputs in data_sets:
        for got, expected in zip(rep.run(list(inputs)), outputs):
            np.testing.assert_allclose(got, expected, rtol=case.rtol, atol=case.atol)


@pytest.mark.parametrize("name", sorted(EXCLUDED_NAMES))
def test_excluded_case_fails_with_a_clear_error(name):
    with pytest.raises(OnnxImportError):
        _run(CASES[name])


def test_every_excluded_case_exists():
    assert set(EXCLUDED_NAMES) <= set(CASES)


def counts():
    """{family: (passed, total)}: passed = included in the BackendTest run."""
    out = {}
    for name in CASES:
        family = family_of(name) or next(k for k in KINDS if name in {
            c.name for c in load_model_tests(kind=k)})
        passed, total = out.get(family, (0, 0))
        out[family] = (passed + (name not in EXCLUDED_NAMES), total + 1)
    return out


if __name__ == "__main__":
    for family, (passed, total) in counts().items():
        print(f"{family}: {passed} of {total}")
