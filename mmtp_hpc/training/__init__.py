"""Training: data, loss and gradient, optimiser, error reports, ensembles."""
