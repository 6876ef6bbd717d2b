"""Analyses of trained weights: sharpness, Hessian spectrum, gradient noise scale, interpolation."""
