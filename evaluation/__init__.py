"""Evaluation of frozen encoders as papers judge them: features (eval transform, pooling), probes (kNN, linear, the
in-training kNN probe), encoders from our or official checkpoints, and eval.py's report beside random init."""
