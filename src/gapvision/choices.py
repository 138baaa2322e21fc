"""The allowed values of the user options that several layers check (torch-free, imports nothing).

Each tuple is defined here once; the CLI's ``choices`` (options.py) and the code that validates or acts on the value
(data/transforms.py, data/memory.py, models/classifier.py, devices.py) import it. The training options' values live
beside TrainConfig in train/config.py (OPTIMIZERS, SCHEDULES, RECIPES).
"""
#: --augment: basic/strong are tensor ops that give the same pixels on the streaming and the in-memory path
#: (data/memory.py BatchAugment); jitter/trivial are torchvision's per-image ops, run on the streaming path only
BATCH_AUGMENTS = ("basic", "strong")
IMAGE_AUGMENTS = ("jitter", "trivial")
AUGMENTS = ("none", *BATCH_AUGMENTS, *IMAGE_AUGMENTS)
NORMALIZE_MODES = ("auto", "imagenet", "half", "caffe")  # auto: statistics of the train split
CHANNELS = ("1", "3", "auto")
IN_MEMORY_MODES = ("auto", "on", "off")
FREEZE = ("none", "backbone", "bn")
#: --init: auto = the first conv whitened (models/whitening.py), then the residual branches zero-initialised
#: (models/residual_init.py) for a network with normalisation layers and data-dependent (models/data_init.py) for one
#: without, trained from scratch
INITS = ("auto", "whiten", "residual", "data", "default")
#: --stem: auto = pooled for a backbone that has that stem (ConvNeXt) trained from scratch, else native (the
#: builder's); pooled = the patchify stem made overlapping (stride 2) and followed by a 3x3 max pool (models/backbones.py)
STEMS = ("auto", "native", "pooled")
SWITCHES = ("auto", "on", "off")  # --amp, --channels-last
#: --tta: flip = the mean over the image and its mirror; crops = that, averaged half and half with the same over the
#: image shifted by one pixel up-left and down-right (airbench's multi-crop test-time augmentation)
TTA_MODES = ("off", "flip", "crops")
#: localize --method: our own (fcn, cam, gradcam) and pytorch-grad-cam's (name -> its class, localize/gradcam_lib.py)
LIBRARY_CAM_METHODS = {"gradcam++": "GradCAMPlusPlus", "scorecam": "ScoreCAM", "layercam": "LayerCAM",
                       "eigencam": "EigenCAM", "xgradcam": "XGradCAM"}
#: ddt: the first principal component of the backbone descriptors (localize/ddt.py)
LOCALIZE_METHODS = ("fcn", "cam", "gradcam", "ddt", "fewshot", *LIBRARY_CAM_METHODS)
