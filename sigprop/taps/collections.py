"""The names sigprop's taps use in a flax variable dict: the collections they record into or read
from, the leaf keys of their records, and the collection of lazy kernels' RNG keys. Names only, so
that every layer that reads or writes variables (taps, the zoo, the engine) agrees on them."""

from sigprop import metrics

MOMENTS = "sigprop_moments"
GRAM = "sigprop_gram"
PAIR = "sigprop_pair"
BRANCH = "sigprop_branch"
TOKEN = "sigprop_token"
MAX_ABS = "sigprop_max_abs"
ATTENTION = "sigprop_attention"
ATTENTION_LOGITS = "sigprop_attention_logits"
PROBES = "probes"  # gradient probes, differentiated
PAIR_PROBES = "pair_probes"  # gradient probes of the pair pass
LOSSES = "losses"  # extra loss terms (RegNorm), sown
TAP_COLLECTIONS = (MOMENTS, GRAM, PAIR, BRANCH, TOKEN, MAX_ABS, ATTENTION, ATTENTION_LOGITS)
SOWN = TAP_COLLECTIONS + (LOSSES,)  # outputs of a pass, never inputs
PAIR_AXIS = "sigprop_pair"  # vmap axis of a pair of batches (similar-batch correlation)
# leaf keys of the records
MOMENTS_KEY, HI_KEY, LO_KEY, PAIR_KEY, BRANCH_KEY, GRAD_KEY = "m", "h", "l", "c", "r", "g"
TOKEN_HI_KEY, TOKEN_LO_KEY, MAX_ABS_KEY, ATTENTION_KEY, LOGITS_KEY, PARAM_KEY = (
    "th", "tl", "x", "a", "q", "w")
GNS_KEY = "n"  # a normalizer's per-example affine-gradient probe, in PROBES (sigprop.metrics.gns)
# which collections record each metric need (sigprop.metrics.NEEDS)
NEED_COLLECTIONS = {metrics.MOMENTS: MOMENTS, metrics.GRAM: GRAM, metrics.PAIR: PAIR,
                    metrics.BRANCH: BRANCH, metrics.TOKEN: TOKEN, metrics.MAX_ABS: MAX_ABS,
                    metrics.ATTENTION: ATTENTION, metrics.ATTENTION_LOGITS: ATTENTION_LOGITS}
# the collection of each record's leaf key
KEY_COLLECTIONS = {MOMENTS_KEY: MOMENTS, HI_KEY: GRAM, LO_KEY: GRAM, PAIR_KEY: PAIR,
                   BRANCH_KEY: BRANCH, TOKEN_HI_KEY: TOKEN, TOKEN_LO_KEY: TOKEN,
                   MAX_ABS_KEY: MAX_ABS, ATTENTION_KEY: ATTENTION, LOGITS_KEY: ATTENTION_LOGITS}
# the names of the weights whose gradient norm is param_grad_norm (dense/conv/einsum, embed)
WEIGHT_NAMES = ("kernel", "embedding")
KERNEL_KEYS = "kernel_keys"  # lazy kernels' RNG keys: not trainable, so not in 'params'
