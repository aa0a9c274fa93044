"""Evaluation of frozen encoders as papers judge them: features (eval transform, pooling), probes (kNN, linear, the
in-training kNN probe), encoders from our or official checkpoints, and eval.py's report beside random init."""


from util.errors import UserError


class EvalError(UserError):
    """A checkpoint, shard folder or option that cannot give meaningful figures; the message names it and says what
    to do."""
