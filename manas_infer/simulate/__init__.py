"""Low-dose CT simulation: a parallel-beam projector with FBP in torch, and the paper's
Poisson plus electronic noise model in the projection domain."""
