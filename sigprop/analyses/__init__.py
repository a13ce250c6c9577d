"""What users run on the engine: :mod:`~sigprop.analyses.analyze` (metrics at initialization),
the Hessian spectrum (:mod:`~sigprop.analyses.hessian` over :mod:`~sigprop.analyses.lanczos`),
training with optax (:mod:`~sigprop.analyses.train`), coordinate checks and the closed forms of
:mod:`~sigprop.analyses.theory` (pure numpy)."""
