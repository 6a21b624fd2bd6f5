"""Data and training: Gaussian toy batches and teacher targets, image data (CIFAR-10 binary or
the embedded digits), STE + Adam training with a checkpoint cache."""
