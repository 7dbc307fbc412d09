"""Every closed choice of a run, written once: the schema, the CLI and the code that
implements each choice all read it from here.

Also the step budgets that the help text quotes. Nothing here imports the code that
implements a choice, so the schema (:mod:`kerastl.config.schema`) depends on nothing
above it.

Example:
    >>> RUN_MODES
    ('auto', 'frozen', 'finetune', 'full', 'scratch')
"""

from __future__ import annotations

AUTO = "auto"

# ---------------------------------------------------------------------------- data
BAD_FILE_POLICIES = ("error", "skip")
AUGMENTATIONS = ("flip", "rotation", "zoom", "contrast", "translate")
# The pre-flight check of image files: decode each once, read headers, or open none.
CHECK_FILES = ("full", "header", "none")

# --------------------------------------------------------------------------- model
HEADS = ("flatten", "avg", "max")
# A linear probe on every depth of the frozen base (kerastl.models.multi_depth).
MULTI_DEPTH_HEAD = "multidepth"
HEAD_NORMS = ("none", "layer", "batch")
TASKS = ("multiclass", "binary", "multilabel")
SKLEARN_HEADS = ("logreg", "linear-svm", "knn")
# A pixel blend (kerastl.recipes.pixel_blend) is switched like the JIT: auto / on / off.
SWITCH = ("auto", "on", "off")
BLEND_CHOICES = SWITCH

# -------------------------------------------------------------------------- regime
# Which layers train (kerastl.models.freezing); a *regime*.
REGIMES = ("frozen", "finetune", "full", "scratch")
# What --mode names: a regime, or the recipe "auto" that chooses phases itself.
RUN_MODES = (AUTO, *REGIMES)
BN_POLICIES = ("frozen", "train")
# How a phase fits the model, and how finetune/full warm their new head up: gradient
# steps, or a logistic regression on cached features written into the head.
PHASE_FITS = ("train", "probe")
DEFAULT_UNFREEZE_BLOCKS = 2

# -------------------------------------------------------------------- optimisation
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
CLASS_WEIGHTS = ("none", "balanced")
# What a run ends with: the weights of its best validated epoch, or the last ones.
KEEP_WEIGHTS = ("best", "last")
# epochs="auto" sizes a phase in optimizer steps (kerastl.recipes.plan.epoch_budget):
# at least TARGET_STEPS steps and MIN_EPOCHS epochs, at most MAX_STEPS steps.
TARGET_STEPS = 300
MIN_EPOCHS = 10
MAX_STEPS = 10_000

# ------------------------------------------------------------------------- runtime
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = SWITCH
FEATURE_CACHE_MODES = ("auto", "off")
# Up to this input side, a depthwise-separable backbone trains faster on one CPU
# thread than on several (kerastl.training.runtime.choose_intra_op_threads).
CPU_ONE_THREAD_MAX_SIDE = 96
