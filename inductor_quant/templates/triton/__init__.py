"""Triton templates of the package's quantized matmuls (stage 6 of the pipeline), offered on CUDA devices."""
