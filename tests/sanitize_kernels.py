"""A short run through every kernel family (forward and backward, float32 and float64) for
valgrind memcheck; see docs/sanitizers.md. Not a pytest module."""
import numpy as np
import fastcnn.functional as F
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    x = rng.standard_normal((2, 4, 9, 7)).astype(dt)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dt)
    y = F.conv2d(x, w, stride=2, padding=1, dilation=2, groups=2)
    F.conv2d_backward(np.ones_like(y), x, w, stride=2, padding=1, dilation=2, groups=2)
    xr = rng.standard_normal((2, 3, 7, 31)).astype(dt)     # the direct kernel along rows
    F.conv2d(xr, rng.standard_normal((9, 3, 3, 3)).astype(dt), padding=(2, 1), activation="relu")
    F.conv2d(xr, rng.standard_normal((18, 3, 3, 3)).astype(dt), stride=(2, 2), padding=1)
    F.conv2d_backward(np.ones((2, 4, 7, 31), dt), rng.standard_normal((2, 5, 7, 31)).astype(dt),
                      rng.standard_normal((4, 5, 3, 3)).astype(dt), padding=1)
    F.conv2d_backward(np.ones((2, 5, 2, 14), dt), xr, rng.standard_normal((5, 3, 5, 5)).astype(dt),
                      stride=2, output_mask=(False, True, False))      # direct weight gradient
    F.batch_norm_backward(x, x, np.ones(4, dt), bias=np.zeros(4, dt), activation="relu")
    wt = rng.standard_normal((4, 3, 3, 3)).astype(dt)
    y = F.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1)
    F.conv_transpose2d_backward(np.ones_like(y), x, wt, stride=2, padding=1, output_padding=1)
    F.conv_transpose2d(xr, rng.standard_normal((3, 4, 4, 3)).astype(dt), stride=2, padding=1)
    F.fold(F.unfold(x, 3, padding=1, stride=2), (9, 7), 3, padding=1, stride=2)
    y, i = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    F.max_pool2d_backward(np.ones_like(y), x, i, 3, 2, 1, ceil_mode=True)
    F.max_unpool2d(y, i, 3, 2, 1, output_size=(9, 7))
    y, i = F.max_pool2d(x, 2, return_indices=True)          # the 2x2 fast path
    F.max_pool2d_backward(np.ones_like(y), x, i, 2)
    y = F.avg_pool2d(x, 2)
    F.avg_pool2d_backward(np.ones_like(y), x, 2)
    y = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    F.avg_pool2d_backward(np.ones_like(y), x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    F.adaptive_avg_pool2d(x, (4, 5)); F.adaptive_max_pool2d(x, (4, 5))
    F.interpolate(x, scale_factor=1.7, mode="bilinear"); F.interpolate(x, size=(5, 11))
    F.batch_norm(x, np.zeros(4, dt), np.ones(4, dt), training=True)
    F.batch_norm_backward(np.ones_like(x), x, training=True)
    F.layer_norm_backward(np.ones_like(x), x, (9, 7))
    F.group_norm_backward(np.ones_like(x), x, 2)
    F.softmax_backward(np.ones_like(x), F.softmax(x, 1), 1)
    t = rng.integers(0, 4, (2, 9, 7))
    F.cross_entropy_backward(np.ones((), dt), x, t, label_smoothing=0.1)
print("ok")
