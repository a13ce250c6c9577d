"""The names sigprop's taps use in a flax variable dict: the collections they record into or read
from, the leaf keys of their records, and the collection of lazy kernels' RNG keys. Names only, so
that every layer that reads or writes variables (taps, the zoo, the engine) agrees on them."""

from sigprop import metrics

MOMENTS = "sigprop_moments"
GRAM = "sigprop_gram"
PAIR = "sigprop_pair"
BRANCH = "sigprop_branch"
PROBES = "probes"  # gradient probes, differentiated
PAIR_PROBES = "pair_probes"  # gradient probes of the pair pass
LOSSES = "losses"  # extra loss terms (RegNorm), sown
TAP_COLLECTIONS = (MOMENTS, GRAM, PAIR, BRANCH)
SOWN = TAP_COLLECTIONS + (LOSSES,)  # outputs of a pass, never inputs
PAIR_AXIS = "sigprop_pair"  # vmap axis of a pair of batches (similar-batch correlation)
# leaf keys of the records
MOMENTS_KEY, HI_KEY, LO_KEY, PAIR_KEY, BRANCH_KEY, GRAD_KEY = "m", "h", "l", "c", "r", "g"
# which collections record each metric need (sigprop.metrics.NEEDS)
NEED_COLLECTIONS = {metrics.MOMENTS: MOMENTS, metrics.GRAM: GRAM, metrics.PAIR: PAIR,
                    metrics.BRANCH: BRANCH}
KERNEL_KEYS = "kernel_keys"  # lazy kernels' RNG keys: not trainable, so not in 'params'
