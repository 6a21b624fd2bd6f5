"""The thin XNOR-ResNet-18 CDG experiment (docs/design.md §4)."""
