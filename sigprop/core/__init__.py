"""The compiled core every analysis calls: the plan of a call and its layer names (plan), which
submodules of a user's model are tapped (:mod:`~sigprop.core.selectors`), the adapters that own a
linen or nnx model's init, split and apply, the seed-vmapped, sharded engine
(:mod:`~sigprop.core.engine`), the loss as a function of the parameters
(:mod:`~sigprop.core.objective`) and the results (:mod:`~sigprop.core.results`)."""
