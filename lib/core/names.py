"""The names the estimator core accepts, without torch: experiment schemas and the pipeline check
parameters against them before anything is computed."""
from __future__ import annotations

PRECISIONS = ("binary", "ternary", "2bit", "fp")  # activation quantizers (lib.core.quantizers)
STE_VARIANTS = ("identity", "clipped", "steep", "swishsign", "polynomial")  # surrogate derivatives, same order
NORMALIZATIONS = ("layer", "global", "none")  # of a gradient before the step (lib.core.evaluate)
LOSSES = ("mse", "cross_entropy")  # lib.core.losses
