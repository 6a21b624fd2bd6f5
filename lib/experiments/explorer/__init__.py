"""The live explorer of the toy: one small problem, every estimator, recomputed from sliders."""
