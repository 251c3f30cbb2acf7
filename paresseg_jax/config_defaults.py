"""Every config field with its default: PA-ResSeg as the paper trains it. The files of configs/ start from this."""

import copy

import ml_collections

# the cascade's liver stage computes every k-th slice first (infer.liver_stage); at 4 the demo's liver Dice
# is unchanged (BENCHMARKS.md). The library's own default too, so a direct call does what paresseg-predict does.
LIVER_SLICE_STEP = 4


def get_config() -> ml_collections.ConfigDict:
    """Every section's defaults; a run's saved config.json is read merged onto them (``workdir.read_config``)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = _model()
    config.data = _data()
    config.train = _train()
    config.eval = _eval()
    return config


def _model() -> ml_collections.ConfigDict:
    """The network, built by paresseg_jax.models.create(**config.model)."""
    model = ml_collections.ConfigDict()
    # name in models.MODELS, fusion in models.FUSION_BLOCKS
    # (None = no fusion block), either also as an import path "my_package.module:ClassName";
    # attention 'reference' | 'paper', dtype 'float32' | 'bfloat16', PV first in phases.
    model.name = "paresseg"
    model.width = 64
    model.in_channels = 3
    model.num_classes = 2
    model.attention = "reference"
    model.precise_attention = True  # attention matmuls at Precision.HIGHEST (no TF32 on Ampere+ GPUs)
    # a name, an import path, or (from Python) the FusionBlock subclass itself
    model.fusion = ml_collections.FieldReference("pa", field_type=object)
    model.dtype = "float32"
    model.phases = ("pv", "art")
    return model


def _data() -> ml_collections.ConfigDict:
    """Cohort, cache, folds and the Grain training pipeline."""
    data = ml_collections.ConfigDict()
    # Grain training pipeline (paresseg_jax.data.pipeline).
    data.crop_size = 224  # square training patch, drawn in the case's liver box
    data.tumor_free_fraction = 1.0  # share of liver slices without tumor kept for training
    data.intensity_jitter = 0.0  # per-phase random scale/shift amplitude; 0 = off (reference)
    # Non-PV phases read displaced against PV: a random shift up to shift_mm per axis plus a smooth deformation
    # up to deformation_mm (paresseg_jax.data.misregistration); 0 = off (reference).
    data.misregistration = ml_collections.ConfigDict({"shift_mm": 0.0, "deformation_mm": 0.0})
    data.worker_count = -1  # Grain worker processes: 0 = load in the training process; -1 = none on a CPU,
    # one per CPU beyond two on an accelerator host, at most 16 (paresseg_jax.data.pipeline.auto_worker_count)
    data.worker_buffer_size = 2  # batches each worker prepares ahead
    data.read_threads = 1  # threads reading source records (ours are tiny; raise for a slow source)
    data.target = "tumor"  # 'tumor' (ROI-gated inputs, tumor label) or 'liver' (whole images, liver label: cascade stage 1)
    # Where training data comes from and which fold (read by paresseg_jax.runs).
    data.cohort_dir = ""  # cohort to preprocess (idempotent, cached); or set cache_dir instead
    data.cache_root = ""  # where preprocessed caches go; "" = <cohort_dir>_cache next to the cohort
    data.preprocess_workers = 0  # processes preprocessing the cohort (0: one per CPU, at most 8)
    data.cache_dir = ""  # an already preprocessed cache folder (skips preprocessing)
    data.num_folds = 5  # cross-validation folds, stratified by tumor type
    data.fold = 0  # the fold held out as the test set (never read by training)
    # of the training folds' patients, stratified by tumor type: validation. 0 (the paper): every training-fold case
    # trains and nothing validates; set it (e.g. 0.2) to watch validation Dice or for eval.checkpoint='best'
    data.val_fraction = 0.0
    data.fold_seed = 0  # shuffles cases into folds (separate from config.seed so folds stay fixed)
    data.preprocess = _preprocess()
    return data


def _preprocess() -> ml_collections.ConfigDict:
    """How a cohort becomes a cache (paresseg_jax.data.preprocess): the paper's settings. The cache folder's
    name is a hash of them, so changing any one preprocesses the cohort again into a new cache."""
    preprocess = ml_collections.ConfigDict()
    preprocess.window = [-70.0, 180.0]  # HU window mapped to [0, 1]
    preprocess.register = True  # register ART (and NC, DL) to PV; False (--noregister) reads them as they are
    preprocess.registration = ml_collections.ConfigDict()
    registration = preprocess.registration
    registration.initial = "rigid"  # "rigid" | "affine" | "none": transform fitted before the B-spline
    registration.grid_mm = 3.0  # registration runs on images binned in-plane to about this spacing
    registration.margin_mm = 20.0  # around a region's box, where register_phase computes the metric when given one
    registration.mesh_mm = 80.0  # B-spline control point spacing (coarse: finer meshes fit the noise)
    registration.shrink_factors = [2, 1]  # image pyramid, coarse to fine
    registration.smoothing_sigmas = [2.0, 1.0]  # voxels, per level; > 0 at the finest too, or CT noise flattens the metric
    registration.intensity_range = [-100.0, 300.0]  # HU kept for the metric: bone and air would waste histogram bins
    registration.histogram_bins = 32  # Mattes mutual information bins
    registration.metric_samples = 10000  # random samples per level (sampling percentage = samples / voxels)
    registration.initial_step_mm = 2.0  # first step of the rigid/affine stage
    registration.initial_iterations = 100  # of the rigid/affine stage
    registration.bspline_step_mm = 1.0  # first step of the B-spline stage
    registration.bspline_iterations = 30  # of the B-spline stage
    registration.seed = 0  # metric sampling seed (registration is reproducible run to run)
    # "liver": the case's liver mask; a folder: liver predictions <folder>/<case_id>.nii.gz (PV geometry, 0/1),
    # as the paper does with its liver-ResSeg
    preprocess.roi_source = "liver"
    preprocess.roi_dilation = 5  # the liver mask dilated by this many pixels per slice is the ROI
    # boundary-enhanced loss weights (cached with each case): v = 3x3x3 mean of the tumor mask; tumor voxels
    # weigh -alpha*v + alpha + w1, others beta*v + w2 (paresseg_jax.data.preprocess.boundary_enhanced_weights)
    preprocess.be_weights = ml_collections.ConfigDict({"w1": 0.8, "w2": 0.2, "alpha": 1.0, "beta": 0.5})
    return preprocess


def _train() -> ml_collections.ConfigDict:
    """Training (paresseg_jax.train): the reference's recipe, Adam 5e-4, batch 8, 500 epochs."""
    train = ml_collections.ConfigDict()
    train.loss = "ce"  # 'ce' (reference), 'be' (paper's 3D boundary-enhanced loss), 'dice_ce'
    train.batch_size = 8  # global batch over all devices and processes
    train.learning_rate = 5e-4
    train.schedule = "constant"  # 'constant' or 'cosine' (warmup then decay to 0)
    train.warmup_steps = 0  # cosine schedule only
    train.weight_decay = 0.0  # > 0 switches Adam to AdamW
    train.num_epochs = 500  # passes over the training slices; used when num_steps is 0
    train.num_steps = 0  # > 0 overrides num_epochs
    train.parallel = "pmap"  # 'pmap' (per-device batches, pmean) or 'jit' (mesh + shardings, multi-host)
    train.log_every = 50  # steps between training-metric records
    train.eval_every = 1000  # steps between validations (full slices, global Dice)
    train.checkpoint_every = 500  # steps between checkpoints (validations also checkpoint)
    train.keep_checkpoints = 3  # latest checkpoints kept, plus the best by validation global Dice
    train.max_consecutive_nonfinite = 10  # stop after this many skipped (NaN/inf) steps in a row
    train.phase_dropout = 0.0  # chance that a non-PV phase of a patch is replaced by zeros (absent); > 0 lets
    # the model run without it (paresseg_jax.absent_phases)
    train.init_from = ""  # start from a saved model (paresseg-convert output) or a workdir, not the seed
    return train


def _eval() -> ml_collections.ConfigDict:
    """Inference and evaluation (paresseg_jax.infer, paresseg_jax.evaluate)."""
    evaluation = ml_collections.ConfigDict()
    evaluation.checkpoint = "last"  # model scored: 'last' (the paper) or 'best' (by validation global Dice)
    evaluation.roi = "cascade"  # 'cascade': the liver-ResSeg's predicted liver, dilated (the paper);
    # 'oracle_gt_liver': the ground-truth liver's dilated ROI from the cache (an upper bound, not the paper's)
    evaluation.threshold = 0.6  # tumor where probability >= threshold (the reference's rule and value)
    evaluation.mode = "full"  # "full": one pass per whole slice (reference code); "tile": overlap-tile (paper)
    evaluation.tile = 224  # overlap-tile window (pixels)
    evaluation.stride = 112  # overlap-tile step (pixels, <= tile)
    evaluation.weighting = "pyramid"  # overlap-tile blending: "pyramid" | "gaussian" (nnU-Net) | "constant"
    evaluation.batch_size = 8  # slices or tiles per forward pass (fixed shape: one compile)
    evaluation.batch_pixels = 0  # at most this many pixels per pass (0: 512 x 512 on a CPU, bounding host memory; no cap on GPUs)
    evaluation.conv_impl = "direct"  # CPU convolutions at inference: "direct" or "fast" (Winograd: less time, more memory)
    evaluation.tta = False  # average over flips along H, W and both
    evaluation.pad_multiple = 32  # full mode pads slices to a multiple of the network's downsampling
    evaluation.crop_to_roi = False  # True: compute only the ROI's bounding box (+ roi_margin px); faster, but
    # it changes attention models' output (channel energies sum over the whole slice); validation uses it too
    evaluation.roi_margin = 32  # pixels of context kept around the ROI's bounding box
    evaluation.liver_threshold = 0.5  # cascade: liver where the liver-model probability >= this
    # cascade without a liver mask (paresseg_jax.infer.liver_stage): the liver model on every k-th slice, then on
    # the slices between the liver-free samples around its hits (1: every slice), at 1/liver_scale resolution in-plane
    evaluation.liver_slice_step = LIVER_SLICE_STEP
    evaluation.liver_scale = 1
    return evaluation


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
