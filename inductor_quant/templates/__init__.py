"""Kernel templates (stage 6 of the pipeline): cpp/ for CPU."""
