"""Bounds of config numbers that become float32 tensors (shared by the config dataclasses of each package)."""

FLOAT32_MAX = 3.4028234663852886e38
# A weight, scale or std past float32's largest value becomes inf in the first float32 tensor it meets, and the
# run stops at step 1 with a non-finite loss that does not name the field: refused at load instead.
NONNEG_F32 = {"min": 0.0, "max": FLOAT32_MAX, "note": "float32's largest value"}
