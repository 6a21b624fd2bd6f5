"""Gradient estimators for binary-activation networks: models, estimators and evaluation.

How wrong is the straight-through estimator? This package computes the STE family and two
reference gradients (the coordinate discrete gradient, CDG, and the NES / evolution-strategies
gradient) on a toy MLP and on a thin XNOR-ResNet-18. See ``../shared/DESIGN.md`` in the lab's
workspace and the README.
"""
