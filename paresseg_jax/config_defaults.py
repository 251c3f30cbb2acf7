"""Every config field with its default: PA-ResSeg as the paper trains it. The files of configs/ start from this."""

import copy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    # paresseg_jax.models.create(**config.model): name in models.MODELS, fusion in models.FUSION_BLOCKS
    # (None = no fusion block), either also as an import path "my_package.module:ClassName";
    # attention 'reference' | 'paper', dtype 'float32' | 'bfloat16', PV first in phases.
    config.model.name = "paresseg"
    config.model.width = 64
    config.model.in_channels = 3
    config.model.num_classes = 2
    config.model.attention = "reference"
    config.model.precise_attention = True  # attention matmuls at Precision.HIGHEST (no TF32 on Ampere+ GPUs)
    # a name, an import path, or (from Python) the FusionBlock subclass itself
    config.model.fusion = ml_collections.FieldReference("pa", field_type=object)
    config.model.dtype = "float32"
    config.model.phases = ("pv", "art")

    config.data = ml_collections.ConfigDict()
    # Grain training pipeline (paresseg_jax.data.pipeline).
    config.data.crop_size = 224  # square training patch, drawn in the case's liver box
    config.data.tumor_free_fraction = 1.0  # share of liver slices without tumor kept for training
    config.data.intensity_jitter = 0.0  # per-phase random scale/shift amplitude; 0 = off (reference)
    # Non-PV phases read displaced against PV: a random shift up to shift_mm per axis plus a smooth deformation
    # up to deformation_mm (paresseg_jax.data.misregistration); 0 = off (reference).
    config.data.misregistration = ml_collections.ConfigDict({"shift_mm": 0.0, "deformation_mm": 0.0})
    config.data.worker_count = -1  # Grain worker processes: 0 = load in the training process; -1 = none on a CPU,
    # one per CPU beyond two on an accelerator host, at most 16 (paresseg_jax.data.pipeline.auto_worker_count)
    config.data.worker_buffer_size = 2  # batches each worker prepares ahead
    config.data.read_threads = 1  # threads reading source records (ours are tiny; raise for a slow source)
    config.data.target = "tumor"  # 'tumor' (ROI-gated inputs, tumor label) or 'liver' (whole images, liver label: cascade stage 1)
    # Where training data comes from and which fold (read by paresseg_jax.train.loop; added by the training helper).
    config.data.cohort_dir = ""  # cohort to preprocess (idempotent, cached); or set cache_dir instead
    config.data.cache_root = ""  # where preprocessed caches go; "" = <cohort_dir>_cache next to the cohort
    config.data.preprocess_workers = 0  # processes preprocessing the cohort (0: one per CPU, at most 8)
    config.data.cache_dir = ""  # an already preprocessed cache folder (skips preprocessing)
    config.data.num_folds = 5  # cross-validation folds, stratified by tumor type
    config.data.fold = 0  # the fold held out as the test set (never read by training)
    # of the training folds' patients, stratified by tumor type: validation. 0 (the paper): every training-fold case
    # trains and nothing validates; set it (e.g. 0.2) to watch validation Dice or for eval.checkpoint='best'
    config.data.val_fraction = 0.0
    config.data.fold_seed = 0  # shuffles cases into folds (separate from config.seed so folds stay fixed)
    config.train = ml_collections.ConfigDict()
    # Training (paresseg_jax.train): the reference's recipe, Adam 5e-4, batch 8, 500 epochs.
    config.train.loss = "ce"  # 'ce' (reference), 'be' (paper's 3D boundary-enhanced loss), 'dice_ce'
    config.train.batch_size = 8  # global batch over all devices and processes
    config.train.learning_rate = 5e-4
    config.train.schedule = "constant"  # 'constant' or 'cosine' (warmup then decay to 0)
    config.train.warmup_steps = 0  # cosine schedule only
    config.train.weight_decay = 0.0  # > 0 switches Adam to AdamW
    config.train.num_epochs = 500  # passes over the training slices; used when num_steps is 0
    config.train.num_steps = 0  # > 0 overrides num_epochs
    config.train.parallel = "pmap"  # 'pmap' (per-device batches, pmean) or 'jit' (mesh + shardings, multi-host)
    config.train.log_every = 50  # steps between training-metric records
    config.train.eval_every = 1000  # steps between validations (full slices, global Dice)
    config.train.checkpoint_every = 500  # steps between checkpoints (validations also checkpoint)
    config.train.keep_checkpoints = 3  # latest checkpoints kept, plus the best by validation global Dice
    config.train.max_consecutive_nonfinite = 10  # stop after this many skipped (NaN/inf) steps in a row
    config.train.phase_dropout = 0.0  # chance that a non-PV phase of a patch is replaced by zeros (absent); > 0 lets
    # the model run without it (paresseg_jax.absent_phases)
    config.train.init_from = ""  # start from a saved model (paresseg-convert output) or a workdir, not the seed
    config.eval = ml_collections.ConfigDict()
    # Inference and evaluation (paresseg_jax.infer, paresseg_jax.evaluate).
    config.eval.checkpoint = "last"  # model scored: 'last' (the paper) or 'best' (by validation global Dice)
    config.eval.roi = "cascade"  # 'cascade': the liver-ResSeg's predicted liver, dilated (the paper);
    # 'oracle_gt_liver': the ground-truth liver's dilated ROI from the cache (an upper bound, not the paper's)
    config.eval.threshold = 0.6  # tumor where probability >= threshold (the reference's rule and value)
    config.eval.mode = "full"  # "full": one pass per whole slice (reference code); "tile": overlap-tile (paper)
    config.eval.tile = 224  # overlap-tile window (pixels)
    config.eval.stride = 112  # overlap-tile step (pixels, <= tile)
    config.eval.weighting = "pyramid"  # overlap-tile blending: "pyramid" | "gaussian" (nnU-Net) | "constant"
    config.eval.batch_size = 8  # slices or tiles per forward pass (fixed shape: one compile)
    config.eval.batch_pixels = 0  # at most this many pixels per pass (0: 512 x 512 on a CPU, bounding host memory; no cap on GPUs)
    config.eval.conv_impl = "direct"  # CPU convolutions at inference: "direct" or "fast" (Winograd: less time, more memory)
    config.eval.tta = False  # average over flips along H, W and both
    config.eval.pad_multiple = 32  # full mode pads slices to a multiple of the network's downsampling
    config.eval.crop_to_roi = False  # True: compute only the ROI's bounding box (+ roi_margin px); faster, but
    # it changes attention models' output (channel energies sum over the whole slice); validation uses it too
    config.eval.roi_margin = 32  # pixels of context kept around the ROI's bounding box
    config.eval.liver_threshold = 0.5  # cascade: liver where the liver-model probability >= this
    return config


def liver_stage(config: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The cascade's stage 1, one definition for every command (``configs/liver_resseg.py``, cross-validation,
    the demo, the ablation): a single-branch ResSeg on PV, cross-entropy, the liver as target, on ``config``'s
    cohort, folds, training recipe and evaluation settings (the defaults' without one). Nothing tumor-specific
    carries over: not the loss (BE weights come from the tumor mask), phase dropout or a tumor init."""
    liver = get_config() if config is None else copy.deepcopy(config)
    liver.model.name = "resseg"
    liver.model.fusion = None
    liver.model.phases = ("pv",)
    liver.data.target = "liver"
    liver.train.loss = "ce"
    liver.train.phase_dropout = 0.0
    liver.train.init_from = ""
    return liver
